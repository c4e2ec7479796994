//! The worker's side of [`HostServices`]: a safe trait ([`Services`]) that `castor`
//! implements, and the `extern "C"` shims that libraries call through. Each shim catches
//! panics, so a bug in the worker's service cannot unwind into a library.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::std_types::{ROption, RResult, RSlice, RStr};
use castor_abi::Uuid;
use castor_abi::abi::{DispatchOptionsAbi, HostError, HostServices, RawId, SnapshotAbi};
use castor_store::LogLevel;

use crate::protocol::Snapshot;

/// What a worker offers running tasks. Implemented by `castor` (on its own connection) and
/// by its process-mode children (by asking the parent).
pub trait Services: Send + Sync + 'static {
    /// Dispatches a task of the running task's manager.
    ///
    /// # Errors
    /// A message for the task, e.g. an unknown task name or a database failure.
    fn dispatch(
        &self,
        task: &str,
        args: &[u8],
        options: &DispatchOptionsAbi,
    ) -> Result<Uuid, String>;

    /// Reads a task's state.
    ///
    /// # Errors
    /// A message for the task if the database cannot be read.
    fn snapshot(&self, id: Uuid) -> Result<Option<Snapshot>, String>;

    /// The database's change counter.
    fn generation(&self) -> u64;

    /// Waits until the counter passes `since`, at most `timeout_ms`.
    fn wait_change(&self, since: u64, timeout_ms: u64) -> u64;

    /// Stores a log line for a running task.
    fn log(&self, id: Uuid, level: LogLevel, line: &str);

    /// Stores a running task's progress.
    fn progress(&self, id: Uuid, done: u64, total: u64, message: &str);
}

fn services(data: *const c_void) -> &'static dyn Services {
    // SAFETY: `data` is the pointer `host_services` made from a `&'static &'static dyn
    // Services`, and only these shims receive it.
    unsafe { *data.cast::<&'static dyn Services>() }
}

fn host_error(message: impl Into<String>) -> HostError {
    HostError {
        message: message.into().into(),
    }
}

extern "C" fn dispatch_shim(
    data: *const c_void,
    task: RStr<'_>,
    args: RSlice<'_, u8>,
    options: &DispatchOptionsAbi,
) -> RResult<RawId, HostError> {
    match catch_unwind(AssertUnwindSafe(|| {
        services(data).dispatch(task.as_str(), args.as_slice(), options)
    })) {
        Ok(Ok(id)) => RResult::ROk(id.into_bytes()),
        Ok(Err(message)) => RResult::RErr(host_error(message)),
        Err(_) => RResult::RErr(host_error("the worker panicked while dispatching")),
    }
}

extern "C" fn snapshot_shim(
    data: *const c_void,
    id: &RawId,
) -> RResult<ROption<SnapshotAbi>, HostError> {
    let id = Uuid::from_bytes(*id);
    match catch_unwind(AssertUnwindSafe(|| services(data).snapshot(id))) {
        Ok(Ok(snapshot)) => RResult::ROk(snapshot.map(SnapshotAbi::from).into()),
        Ok(Err(message)) => RResult::RErr(host_error(message)),
        Err(_) => RResult::RErr(host_error("the worker panicked while reading a task")),
    }
}

extern "C" fn generation_shim(data: *const c_void) -> u64 {
    catch_unwind(AssertUnwindSafe(|| services(data).generation())).unwrap_or(0)
}

extern "C" fn wait_change_shim(data: *const c_void, since: u64, timeout_ms: u64) -> u64 {
    catch_unwind(AssertUnwindSafe(|| {
        services(data).wait_change(since, timeout_ms)
    }))
    .unwrap_or(since.wrapping_add(1))
}

extern "C" fn log_shim(data: *const c_void, id: &RawId, level: u8, line: RStr<'_>) {
    let id = Uuid::from_bytes(*id);
    let _ = catch_unwind(AssertUnwindSafe(|| {
        services(data).log(id, LogLevel::from_u8(level), line.as_str());
    }));
}

extern "C" fn progress_shim(
    data: *const c_void,
    id: &RawId,
    done: u64,
    total: u64,
    message: RStr<'_>,
) {
    let id = Uuid::from_bytes(*id);
    let _ = catch_unwind(AssertUnwindSafe(|| {
        services(data).progress(id, done, total, message.as_str());
    }));
}

/// Builds the [`HostServices`] table for `services`. The table and the services live for
/// the rest of the process (tasks may keep handles that call back later).
pub fn host_services(services: &'static dyn Services) -> &'static HostServices {
    let data: &'static &'static dyn Services = Box::leak(Box::new(services));
    Box::leak(Box::new(HostServices {
        data: std::ptr::from_ref(data).cast(),
        dispatch: dispatch_shim,
        snapshot: snapshot_shim,
        generation: generation_shim,
        wait_change: wait_change_shim,
        log: log_shim,
        progress: progress_shim,
    }))
}
