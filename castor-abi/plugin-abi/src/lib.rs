//! The stable boundary between a task library and the `castor` worker: `#[repr(C)]`
//! `StableAbi` types only, layout-checked by abi_stable when the worker loads a library.
//! Plugin authors and the macros use it as `castor_abi::abi`; it is a crate of its own so
//! that its version, the plugin ABI version ([`ABI_VERSION`]), is kept by hand and moves
//! only when a type here changes, not with every castor release.
//!
//! A library exports one [`PluginRoot`] (through `castor_abi::export_managers!`), which
//! lists its managers as [`ManagerDecl`]s; each task is a [`TaskDecl`] whose `run`
//! function the worker calls with a [`HostCtx`]. Everything a running task asks of the
//! worker (dispatch a subtask, read a task's state, log) goes back through the function
//! pointers of [`HostServices`], so it runs on the worker's own database connection: a
//! library never opens the database inside the worker.
//!
//! Every function pointer in this module catches panics on its own side and returns an error
//! value instead: a panic that unwinds across `extern "C"` aborts the worker.
//!
//! Changing any type here changes the layout the worker checks, so a library built against
//! another layout is refused at load with both plugin ABI versions in the message. This
//! file must build with abi_stable alone: the ABI test fixtures compile copies of it.

use std::ffi::c_void;
use std::sync::atomic::AtomicBool;

use abi_stable::library::RootModule;
use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings};

/// The plugin ABI version: this crate's own, hand-kept version, which a worker and a
/// library must agree on by cargo's semver rules (while it is 0.y.z, the same y), besides
/// their layouts matching. It is also the root module's version strings and the package
/// version abi_stable records for each type here. Not castor-abi's crate version: a
/// release that changes no type here keeps it.
pub const ABI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A UUID as it crosses the boundary.
pub type RawId = [u8; 16];

/// The root module a task library exports: its managers.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginRootRef)))]
#[sabi(missing_field(panic))]
pub struct PluginRoot {
    /// The managers the library declares, built on each call. Fails (instead of
    /// panicking) if a declaration is invalid, e.g. two tasks share a name.
    #[sabi(last_prefix_field)]
    pub managers: extern "C" fn() -> RResult<RVec<ManagerDecl>, RString>,
    /// Called once by a worker, and by each of its process-mode children, right after
    /// loading the library: installs, in the library's own copies of `log` and
    /// `tracing`, a logger and a subscriber that forward each record to `services.log`,
    /// for the task running on the recording thread, or with the nil id for a record
    /// made outside any task. `filter` is a `target=level,..` list (`info` when empty or
    /// invalid) of what to forward. Added after the first 0.1.0 layout: an older worker
    /// still loads a library that has it (and never calls it), but this worker refuses a
    /// library built without it (rebuild the library).
    pub attach: extern "C" fn(&'static HostServices, RStr<'_>),
}

impl RootModule for PluginRootRef {
    declare_root_module_statics! {PluginRootRef}
    const BASE_NAME: &'static str = "castor_plugin";
    const NAME: &'static str = "castor plugin";
    const VERSION_STRINGS: abi_stable::sabi_types::VersionStrings = package_version_strings!();
}

/// A named manager: its database and its tasks.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct ManagerDecl {
    /// The name after the colon in `castor LIB:NAME`.
    pub name: RString,
    /// The SQLite file, as declared (relative paths are relative to the working directory).
    pub database: RString,
    /// The tasks, with unique names.
    pub tasks: RVec<TaskDecl>,
    /// The periodic tasks, with unique names.
    pub periodic: RVec<PeriodicDecl>,
}

/// A periodic task of a manager.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct PeriodicDecl {
    /// The task it runs (one of the manager's).
    pub task: RString,
    /// The schedule's name, unique within the manager.
    pub name: RString,
    /// The interval in milliseconds, or 0 for a cron schedule.
    pub every_ms: u64,
    /// The cron expression (UTC), or empty for an interval.
    pub cron: RString,
    /// The encoded arguments of every run.
    pub args: RVec<u8>,
    /// Missed ticks are skipped (true) or run once (false).
    pub skip_missed: bool,
}

/// How a task runs.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskMode {
    /// On the worker's thread pool, inside the worker process (I/O-bound work).
    Thread = 0,
    /// In a child process of the worker (CPU-bound or crash-prone work).
    Process = 1,
}

impl TaskMode {
    /// `thread` or `process`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskMode::Thread => "thread",
            TaskMode::Process => "process",
        }
    }
}

impl std::fmt::Display for TaskMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Runs one attempt of a task: decodes the arguments, calls the function, encodes the result.
pub type RunFn = extern "C" fn(&HostCtx<'_>, RSlice<'_, u8>) -> RResult<RVec<u8>, TaskFailure>;

/// The root module's `attach` (see [`PluginRoot::attach`]).
pub type AttachFn = extern "C" fn(&'static HostServices, RStr<'_>);

/// Renders stored arguments (or a result, with `true`) as JSON.
pub type DescribeFn = extern "C" fn(RSlice<'_, u8>, bool) -> RResult<RString, RString>;

/// One task of a manager, with its declared policy.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct TaskDecl {
    /// The task's name, unique within its manager.
    pub name: RString,
    /// Thread or process.
    pub mode: TaskMode,
    /// Declared timeout in milliseconds; 0 means none.
    pub timeout_ms: u64,
    /// How many attempts before the task is discarded (at least 1).
    pub max_attempts: u32,
    /// Backoff after the first failed attempt, in milliseconds.
    pub backoff_base_ms: u64,
    /// Longest backoff, in milliseconds.
    pub backoff_cap_ms: u64,
    /// Runs one attempt.
    pub run: extern "C" fn(&HostCtx<'_>, RSlice<'_, u8>) -> RResult<RVec<u8>, TaskFailure>,
    /// Decodes stored arguments (or, with `true`, a stored result) and renders them as
    /// JSON, for people reading the database (`castor show`).
    pub describe: extern "C" fn(RSlice<'_, u8>, bool) -> RResult<RString, RString>,
    /// The fingerprint of the argument tuple's type (16 hex digits; see
    /// `castor_abi::fingerprint`): the worker claims only tasks dispatched with it (or
    /// with none). Added in plugin ABI 0.2.
    pub args_fingerprint: RString,
    /// The fingerprint of the result's type, recorded with each result this library
    /// produces, so that an app expecting another type refuses to decode it. Added in
    /// plugin ABI 0.2.
    pub result_fingerprint: RString,
    /// The global concurrency limit: at most this many attempts running at once across
    /// every worker on the database (per partition key, with `concurrency_key`); 0: none.
    /// Added in plugin ABI 0.3, as are the next three.
    pub concurrency: u32,
    /// The name of the argument whose value partitions the concurrency limit (computed
    /// by the dispatching side, stored on the row); empty: one partition.
    pub concurrency_key: RString,
    /// The rate limit: at most this many starts in any window of `rate_per_ms`; 0: none.
    pub rate_count: u32,
    /// The rate limit's window in milliseconds (1 s, 1 min or 1 h).
    pub rate_per_ms: u64,
}

/// Why an attempt did not produce a result, as reported by the library.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The task returned an error; it may be retried.
    Error = 0,
    /// The task returned an error and asked not to be retried.
    Discard = 1,
    /// The task panicked.
    Panic = 2,
    /// The stored arguments do not decode as the task's parameters (never retried).
    DecodeArgs = 3,
    /// The task's result could not be encoded.
    EncodeResult = 4,
    /// The task saw it was cancelled and stopped.
    Cancelled = 5,
}

/// An attempt's failure: its kind and a human-readable message.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct TaskFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// The message shown to users.
    pub message: RString,
}

/// What a running task knows about itself, plus the worker's services. Valid for the
/// duration of one `run` call.
#[repr(C)]
#[derive(StableAbi)]
pub struct HostCtx<'a> {
    /// The worker's services; they outlive every task (the worker keeps them for its life).
    pub services: &'a HostServices,
    /// The task's id.
    pub task_id: RawId,
    /// The task's name.
    pub task_name: RStr<'a>,
    /// The 1-based attempt number.
    pub attempt: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// Set by the worker when the task is cancelled or times out; tasks poll it.
    pub cancelled: &'a AtomicBool,
}

/// A dispatch's options, resolved against the task's declaration by the dispatching side.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct DispatchOptionsAbi {
    /// Run no earlier than this time (microseconds since the epoch); `None`: now.
    pub run_at_us: ROption<i64>,
    /// Higher runs first among available tasks.
    pub priority: i32,
    /// A second dispatch with the same key while the first is unfinished returns the first.
    pub unique_key: ROption<RString>,
    /// The attempt limit.
    pub max_attempts: u32,
    /// The timeout per attempt, in milliseconds.
    pub timeout_ms: ROption<u64>,
    /// Backoff after the first failed attempt, in milliseconds.
    pub backoff_base_ms: u64,
    /// Longest backoff, in milliseconds.
    pub backoff_cap_ms: u64,
    /// The dispatching side's fingerprint of the task's argument tuple (empty: unknown),
    /// stored on the row. Added in plugin ABI 0.2.
    pub args_fingerprint: RString,
    /// The partition of the task's keyed concurrency limit (the declared argument's
    /// value, as text); `None`: none. Added in plugin ABI 0.3.
    pub concurrency_key: ROption<RString>,
}

/// A task's state and outcome as read through the worker.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct SnapshotAbi {
    /// The state's name, as `castor_abi::TaskState::as_str` spells it.
    pub state: RString,
    /// The task's name.
    pub task: RString,
    /// Attempts made so far.
    pub attempt: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// The encoded result, once completed.
    pub result: ROption<RVec<u8>>,
    /// The recorded attempt errors, as JSON.
    pub errors_json: RString,
    /// The fingerprint of the result's type, as recorded by the worker that produced it
    /// (empty: unknown). Added in plugin ABI 0.2.
    pub result_fingerprint: RString,
}

/// An error reported by a worker service.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct HostError {
    /// What went wrong, for the user.
    pub message: RString,
}

/// The worker's services for running tasks. `data` is the worker's own object, passed
/// back to each function; the worker guarantees it is thread-safe and lives as long as
/// the process.
#[repr(C)]
#[derive(StableAbi)]
pub struct HostServices {
    /// The worker's object.
    pub data: *const c_void,
    /// Dispatches a task of the running task's manager; returns the new task's id.
    pub dispatch: extern "C" fn(
        *const c_void,
        RStr<'_>,
        RSlice<'_, u8>,
        &DispatchOptionsAbi,
    ) -> RResult<RawId, HostError>,
    /// Reads a task's state; `None` if no task has that id.
    pub snapshot: extern "C" fn(*const c_void, &RawId) -> RResult<ROption<SnapshotAbi>, HostError>,
    /// The database's change counter, for waiting.
    pub generation: extern "C" fn(*const c_void) -> u64,
    /// Blocks until the change counter passes `since` or `timeout_ms` elapses; returns the
    /// counter.
    pub wait_change: extern "C" fn(*const c_void, u64, u64) -> u64,
    /// Records a log line for a task (level: 0 debug, 1 info, 2 warn, 3 error); the nil
    /// id means a line of the library's own, made outside any task.
    pub log: extern "C" fn(*const c_void, &RawId, u8, RStr<'_>),
    /// Records a task's progress: done of total (total 0: a fraction in done/1e6), and a
    /// message.
    pub progress: extern "C" fn(*const c_void, &RawId, u64, u64, RStr<'_>),
}

// SAFETY: `data` is only ever used through the functions next to it, which the worker
// implements for a `Send + Sync` object that lives for the rest of the process.
unsafe impl Send for HostServices {}
// SAFETY: as above.
unsafe impl Sync for HostServices {}
