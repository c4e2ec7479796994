//! What a task is: its declaration ([`TaskSpec`], written by `#[task]`), the options of
//! one dispatch ([`DelayOptions`]), what a running task can ask for ([`TaskContext`]) and
//! how it says "do not retry" ([`TaskError`]).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use abi_stable::std_types::RString;
use uuid::Uuid;

use crate::abi::{DescribeFn, DispatchOptionsAbi, RunFn, TaskDecl, TaskMode};
use crate::backend::Backend;
use crate::manager::{Dispatch, Dispatcher};
use castor_store::Backoff;
use castor_store::LogLevel;

/// A task's declaration: its name, mode and policy, and the function that runs one
/// attempt. `#[castor_abi::task]` writes one as `SPEC` in the task's module.
#[derive(Debug, Clone, Copy)]
pub struct TaskSpec {
    /// The task's name (the function's name unless the attribute says otherwise).
    pub name: &'static str,
    /// Thread or process.
    pub mode: TaskMode,
    /// The longest an attempt may run.
    pub timeout: Option<Duration>,
    /// Attempts before the task is discarded.
    pub max_attempts: u32,
    /// Wait between attempts.
    pub backoff: Backoff,
    /// Runs one attempt (generated glue; catches panics).
    pub run: RunFn,
    /// Renders stored arguments or results as JSON (generated glue).
    pub describe: DescribeFn,
    /// The task's type fingerprints (generated glue: computed once per process).
    pub fingerprints: fn() -> &'static crate::Fingerprints,
    /// The task's global flow-control limits (`concurrency`, `rate`, `concurrency_key`).
    pub limits: TaskLimits,
}

/// A task's declared flow control, enforced by every worker on the database in its claim
/// (`#[task(thread, concurrency = 4, rate = "10/s", concurrency_key = customer)]`); a
/// run-time override (`castor limit`) wins over it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskLimits {
    /// At most this many attempts running at once across every worker (per key, with
    /// `concurrency_key`).
    pub concurrency: Option<u32>,
    /// At most this many starts in any window of the rate's length.
    pub rate: Option<crate::Rate>,
    /// The argument whose value partitions the concurrency limit.
    pub concurrency_key: Option<&'static str>,
}

impl TaskLimits {
    /// No limits.
    pub const NONE: TaskLimits = TaskLimits {
        concurrency: None,
        rate: None,
        concurrency_key: None,
    };
}

impl TaskSpec {
    pub(crate) fn to_decl(self) -> TaskDecl {
        TaskDecl {
            name: self.name.into(),
            mode: self.mode,
            timeout_ms: self.timeout.map_or(0, millis),
            max_attempts: self.max_attempts,
            backoff_base_ms: millis(self.backoff.base),
            backoff_cap_ms: millis(self.backoff.cap),
            run: self.run,
            describe: self.describe,
            args_fingerprint: (self.fingerprints)().args.as_str().into(),
            result_fingerprint: (self.fingerprints)().result.as_str().into(),
            concurrency: self.limits.concurrency.unwrap_or(0),
            concurrency_key: self.limits.concurrency_key.unwrap_or("").into(),
            rate_count: self.limits.rate.map_or(0, |r| r.count),
            rate_per_ms: self.limits.rate.map_or(0, |r| millis(r.per)),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Options for one dispatch, overriding the task's declaration where set.
///
/// ```
/// use std::time::Duration;
/// use castor_abi::DelayOptions;
///
/// let options = DelayOptions::new()
///     .after(Duration::from_secs(60))
///     .priority(10)
///     .max_attempts(5);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DelayOptions {
    at: Option<SystemTime>,
    after: Option<Duration>,
    priority: Option<i32>,
    unique_key: Option<String>,
    max_attempts: Option<u32>,
    timeout: Option<Duration>,
    backoff: Option<Backoff>,
}

impl DelayOptions {
    /// No overrides: run now, with the declared policy.
    pub fn new() -> DelayOptions {
        DelayOptions::default()
    }

    /// Run no earlier than `time` (a time in the past means now). Not with [`after`](Self::after).
    #[must_use]
    pub fn at(mut self, time: SystemTime) -> DelayOptions {
        self.at = Some(time);
        self
    }

    /// Run no earlier than `countdown` from now. Not with [`at`](Self::at).
    #[must_use]
    pub fn after(mut self, countdown: Duration) -> DelayOptions {
        self.after = Some(countdown);
        self
    }

    /// Higher priorities run first among available tasks (default 0; may be negative).
    #[must_use]
    pub fn priority(mut self, priority: i32) -> DelayOptions {
        self.priority = Some(priority);
        self
    }

    /// While a task of the same name with this key is unfinished, dispatching again returns
    /// that task's handle instead of adding one. Enforced by a unique index.
    #[must_use]
    pub fn unique(mut self, key: impl Into<String>) -> DelayOptions {
        self.unique_key = Some(key.into());
        self
    }

    /// Overrides how many attempts the task gets (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> DelayOptions {
        self.max_attempts = Some(attempts);
        self
    }

    /// Overrides the timeout of each attempt.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> DelayOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Overrides the backoff between attempts.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> DelayOptions {
        self.backoff = Some(backoff);
        self
    }

    pub(crate) fn has_unique_key(&self) -> bool {
        self.unique_key.is_some()
    }

    /// Checks the options and fills in the declaration's policy.
    pub(crate) fn resolve(&self, spec: &TaskSpec) -> Result<DispatchOptionsAbi, String> {
        let run_at_us = match (self.at, self.after) {
            (Some(_), Some(_)) => {
                return Err("`at` and `after` both set a start time; give one of them".into());
            }
            (Some(at), None) => Some(
                at.duration_since(UNIX_EPOCH)
                    .map_err(|_| "`at` is before 1970".to_owned())
                    .map(castor_store::duration_us)?,
            ),
            (None, Some(after)) => {
                Some(castor_store::now_us().saturating_add(castor_store::duration_us(after)))
            }
            (None, None) => None,
        };
        let max_attempts = self.max_attempts.unwrap_or(spec.max_attempts);
        if max_attempts == 0 {
            return Err("`max_attempts` must be at least 1".into());
        }
        let backoff = self.backoff.unwrap_or(spec.backoff);
        if backoff.base > backoff.cap {
            return Err(format!(
                "backoff base {:?} is longer than its cap {:?}",
                backoff.base, backoff.cap
            ));
        }
        let timeout = self.timeout.or(spec.timeout);
        if timeout == Some(Duration::ZERO) {
            return Err("`timeout` must be longer than zero".into());
        }
        Ok(DispatchOptionsAbi {
            run_at_us: run_at_us.into(),
            priority: self.priority.unwrap_or(0),
            unique_key: self.unique_key.clone().map(RString::from).into(),
            max_attempts,
            timeout_ms: timeout.map(millis).into(),
            backoff_base_ms: millis(backoff.base),
            backoff_cap_ms: millis(backoff.cap),
            args_fingerprint: (spec.fingerprints)().args.as_str().into(),
            concurrency_key: abi_stable::std_types::ROption::RNone,
        })
    }
}

/// An error a task returns to control what happens next. Any other error type that
/// implements `Display` is also accepted and is retried while attempts remain.
///
/// ```
/// use castor_abi::TaskError;
///
/// fn charge(amount: i64) -> Result<(), TaskError> {
///     if amount < 0 {
///         // Retrying cannot fix a negative amount.
///         return Err(TaskError::discard(format!("negative amount {amount}")));
///     }
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    message: String,
    kind: TaskErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskErrorKind {
    Retry,
    Discard,
    Cancelled,
}

impl TaskError {
    /// A failure that may succeed on a later attempt (while attempts remain).
    pub fn new(message: impl Into<String>) -> TaskError {
        TaskError {
            message: message.into(),
            kind: TaskErrorKind::Retry,
        }
    }

    /// A failure no retry can fix: the task is discarded now, whatever attempts remain.
    pub fn discard(message: impl Into<String>) -> TaskError {
        TaskError {
            message: message.into(),
            kind: TaskErrorKind::Discard,
        }
    }

    /// The task saw [`TaskContext::is_cancelled`] and stopped early.
    pub fn cancelled() -> TaskError {
        TaskError {
            message: "cancelled".into(),
            kind: TaskErrorKind::Cancelled,
        }
    }

    pub(crate) fn kind(&self) -> TaskErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

enum CancelFlag {
    /// The worker's flag for this attempt; valid for as long as the context exists, since
    /// the glue lends the context only for the duration of the call.
    Host(*const AtomicBool),
    Owned(Arc<AtomicBool>),
}

/// What a running task can ask of Castor: who it is, whether it should stop, logging and
/// progress, and dispatching other tasks (`other_task::delay(ctx, ..)`), all through the
/// worker. Declare it as the task's first parameter to receive it:
///
/// ```
/// use castor_abi::TaskContext;
///
/// #[castor_abi::task(thread)]
/// fn crunch(ctx: &TaskContext, items: Vec<u64>) -> u64 {
///     let mut sum = 0;
///     for (i, item) in items.iter().enumerate() {
///         if ctx.is_cancelled() {
///             break;
///         }
///         sum += item;
///         ctx.progress(i as u64 + 1, items.len() as u64);
///     }
///     ctx.info(format!("summed {} items", items.len()));
///     sum
/// }
/// # fn main() {}
/// ```
pub struct TaskContext {
    backend: Arc<dyn Backend>,
    id: Uuid,
    task: String,
    attempt: u32,
    max_attempts: u32,
    cancelled: CancelFlag,
}

// SAFETY: the only non-thread-safe field is the pointer to the worker's `AtomicBool`,
// which is itself `Sync` and outlives every borrow of the context (see `CancelFlag::Host`).
unsafe impl Send for TaskContext {}
// SAFETY: as above.
unsafe impl Sync for TaskContext {}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id)
            .field("task", &self.task)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    pub(crate) fn from_host(host: &crate::abi::HostCtx<'_>, backend: Arc<dyn Backend>) -> Self {
        TaskContext {
            backend,
            id: Uuid::from_bytes(host.task_id),
            task: host.task_name.as_str().to_owned(),
            attempt: host.attempt,
            max_attempts: host.max_attempts,
            cancelled: CancelFlag::Host(host.cancelled),
        }
    }

    pub(crate) fn detached(backend: Arc<dyn Backend>, task: &str) -> Self {
        TaskContext {
            backend,
            id: Uuid::now_v7(),
            task: task.to_owned(),
            attempt: 1,
            max_attempts: 1,
            cancelled: CancelFlag::Owned(Arc::new(AtomicBool::new(false))),
        }
    }

    /// The running task's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The running task's name.
    pub fn task_name(&self) -> &str {
        &self.task
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The attempt limit: when `attempt() == max_attempts()` this is the last try.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// True once the task was cancelled or ran past its timeout. Thread tasks cannot be
    /// killed, so a long thread task should check this and return
    /// [`TaskError::cancelled`]; process tasks are killed after a grace period anyway.
    pub fn is_cancelled(&self) -> bool {
        match &self.cancelled {
            // SAFETY: see `CancelFlag::Host`.
            CancelFlag::Host(flag) => unsafe { (**flag).load(Ordering::Relaxed) },
            CancelFlag::Owned(flag) => flag.load(Ordering::Relaxed),
        }
    }

    /// Logs a debug line, stored with the task.
    pub fn debug(&self, line: impl AsRef<str>) {
        self.backend.log(self.id, LogLevel::Debug, line.as_ref());
    }

    /// Logs an info line, stored with the task (shown by `castor show` and the dashboard).
    pub fn info(&self, line: impl AsRef<str>) {
        self.backend.log(self.id, LogLevel::Info, line.as_ref());
    }

    /// Logs a warning, stored with the task.
    pub fn warn(&self, line: impl AsRef<str>) {
        self.backend.log(self.id, LogLevel::Warn, line.as_ref());
    }

    /// Logs an error line, stored with the task. (This does not fail the task; return an
    /// error for that.)
    pub fn error(&self, line: impl AsRef<str>) {
        self.backend.log(self.id, LogLevel::Error, line.as_ref());
    }

    /// Reports progress as `done` of `total` units.
    pub fn progress(&self, done: u64, total: u64) {
        self.backend.progress(self.id, done, total, "");
    }

    /// Reports progress with a message saying what the task is doing.
    pub fn progress_with(&self, done: u64, total: u64, message: impl AsRef<str>) {
        self.backend
            .progress(self.id, done, total, message.as_ref());
    }
}

impl crate::manager::sealed::Sealed for TaskContext {}

impl Dispatch for TaskContext {
    fn dispatcher(&self) -> Dispatcher {
        Dispatcher(Arc::clone(&self.backend))
    }
}

/// The row a dispatch inserts, made from its options as they cross the ABI: the one
/// conversion an app's `Client` and a worker's services share. A trait because the
/// options' type lives in the ABI crate, which knows nothing of the store.
pub trait NewTaskFromAbi {
    /// The row a dispatch with these options inserts.
    fn new_task<'a>(
        &'a self,
        manager: &'a str,
        task: &'a str,
        args: &'a [u8],
    ) -> castor_store::NewTask<'a>;
}

impl NewTaskFromAbi for DispatchOptionsAbi {
    fn new_task<'a>(
        &'a self,
        manager: &'a str,
        task: &'a str,
        args: &'a [u8],
    ) -> castor_store::NewTask<'a> {
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        castor_store::NewTask {
            manager,
            task,
            args,
            run_at_us: self.run_at_us.into_option(),
            priority: self.priority,
            unique_key: self.unique_key.as_ref().map(|k| k.as_str()).into_option(),
            max_attempts: self.max_attempts,
            backoff_base_ms: ms(self.backoff_base_ms),
            backoff_cap_ms: ms(self.backoff_cap_ms),
            timeout_ms: self.timeout_ms.into_option().map(ms),
            schedule_id: None,
            args_fingerprint: Some(self.args_fingerprint.as_str()).filter(|fp| !fp.is_empty()),
            concurrency_key: self
                .concurrency_key
                .as_ref()
                .map(|k| k.as_str())
                .into_option(),
        }
    }
}
