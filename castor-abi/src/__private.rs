//! Glue the macros expand to. Not part of the public API: names and signatures here
//! change whenever the macros change.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

pub use abi_stable;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::abi::{FailureKind, HostCtx, ManagerDecl, PluginRoot, PluginRootRef, TaskFailure};
use crate::backend::HostBackend;
use crate::codec;
use crate::error::DispatchError;
use crate::handle::TaskHandle;
use crate::manager::{Dispatch, Manager};
use crate::task::{DelayOptions, TaskContext, TaskErrorKind, TaskSpec};

fn invalid(spec: &TaskSpec, reason: String) -> DispatchError {
    DispatchError::InvalidOptions {
        task: spec.name.to_owned(),
        reason,
    }
}

fn encode_args<A: Serialize>(spec: &TaskSpec, args: &A) -> Result<Vec<u8>, DispatchError> {
    codec::encode(args).map_err(|error| match error {
        codec::EncodeError::TooLarge { size, limit, .. } => DispatchError::ArgsTooLarge {
            task: spec.name.to_owned(),
            size,
            limit,
        },
        error => DispatchError::EncodeArgs {
            task: spec.name.to_owned(),
            error,
        },
    })
}

/// `my_task::delay_with(to, options, args..)`.
pub fn delay<A: Serialize, R: DeserializeOwned>(
    to: &impl Dispatch,
    spec: TaskSpec,
    options: &DelayOptions,
    args: &A,
) -> Result<TaskHandle<R>, DispatchError> {
    let resolved = options.resolve(&spec).map_err(|r| invalid(&spec, r))?;
    let bytes = encode_args(&spec, args)?;
    let backend = to.dispatcher().0;
    let id = backend.dispatch(spec.name, &bytes, &resolved)?;
    Ok(TaskHandle::dispatched(id, spec.name, backend))
}

/// `my_task::delay_many(to, args)`: one transaction for all of them.
pub fn delay_many<A: Serialize, R: DeserializeOwned>(
    to: &impl Dispatch,
    spec: TaskSpec,
    options: &DelayOptions,
    args: impl IntoIterator<Item = A>,
) -> Result<Vec<TaskHandle<R>>, DispatchError> {
    let resolved = options.resolve(&spec).map_err(|r| invalid(&spec, r))?;
    let encoded = args
        .into_iter()
        .map(|args| encode_args(&spec, &args))
        .collect::<Result<Vec<_>, _>>()?;
    let backend = to.dispatcher().0;
    let ids = backend.dispatch_many(spec.name, &encoded, &resolved)?;
    Ok(ids
        .into_iter()
        .map(|id| TaskHandle::dispatched(id, spec.name, std::sync::Arc::clone(&backend)))
        .collect())
}

/// `my_task::schedule(to, schedule, args..)`.
pub fn schedule<A: Serialize, R: DeserializeOwned>(
    to: &impl Dispatch,
    spec: TaskSpec,
    schedule: &crate::Schedule,
    args: &A,
) -> Result<crate::ScheduleHandle<R>, DispatchError> {
    let resolved = schedule.resolve(&spec).map_err(|r| invalid(&spec, r))?;
    let bytes = encode_args(&spec, args)?;
    let backend = to.dispatcher().0;
    let id = backend.create_schedule(spec.name, &bytes, &resolved)?;
    Ok(crate::ScheduleHandle::new(id, spec.name, backend))
}

/// `my_task::handle(client, id)`.
pub fn handle<R: DeserializeOwned>(
    to: &crate::Client,
    spec: TaskSpec,
    id: uuid::Uuid,
) -> TaskHandle<R> {
    to.handle(id, spec.name)
}

thread_local! {
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Routes panics inside tasks to the attempt's error instead of the terminal. Installed
/// once, when a worker loads the library; panics outside tasks keep the previous hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_TASK.with(Cell::get) {
                let text = info.to_string().replace('\n', " ");
                LAST_PANIC.with(|last| *last.borrow_mut() = Some(text));
            } else {
                previous(info);
            }
        }));
    });
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = LAST_PANIC.with(|last| last.borrow_mut().take()) {
        return text;
    }
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked with a non-string payload".to_owned()
    }
}

fn failure(kind: FailureKind, message: impl Into<String>) -> TaskFailure {
    TaskFailure {
        kind,
        message: RString::from(message.into()),
    }
}

/// Turns a task's error into a failure, honouring [`TaskError`](crate::TaskError)'s kind.
pub fn failure_from_error<E: Display + 'static>(error: E) -> TaskFailure {
    let any: &dyn Any = &error;
    match any.downcast_ref::<crate::TaskError>() {
        Some(e) => failure(
            match e.kind() {
                TaskErrorKind::Retry => FailureKind::Error,
                TaskErrorKind::Discard => FailureKind::Discard,
                TaskErrorKind::Cancelled => FailureKind::Cancelled,
            },
            e.message(),
        ),
        None => failure(FailureKind::Error, error.to_string()),
    }
}

/// The body of every task's `extern "C"` runner: decode, call, encode, and never let a
/// panic unwind into the worker.
pub fn run<A, R>(
    host: &HostCtx<'_>,
    args: RSlice<'_, u8>,
    f: impl FnOnce(&TaskContext, A) -> Result<R, TaskFailure>,
) -> RResult<RVec<u8>, TaskFailure>
where
    A: DeserializeOwned,
    R: Serialize,
{
    IN_TASK.with(|flag| flag.set(true));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let task = host.task_name.as_str();
        let args: A = codec::decode(args.as_slice()).map_err(|e| {
            let message = match e {
                codec::DecodeError::Invalid { .. } => format!(
                    "task `{task}`: the stored arguments do not match its parameters \
                     (was the app built against another version of the task?): {e}"
                ),
                _ => format!("task `{task}`: its stored arguments cannot be read: {e}"),
            };
            failure(FailureKind::DecodeArgs, message)
        })?;
        // SAFETY: the worker keeps its services alive for the rest of the process.
        let backend = unsafe { HostBackend::shared(host.services) };
        let ctx = TaskContext::from_host(host, backend);
        let value = f(&ctx, args)?;
        codec::encode(&value).map_err(|e| match e {
            // Retried under the task's policy, like any error: the size may depend on data
            // that changes between attempts.
            codec::EncodeError::TooLarge { size, .. } => {
                failure(FailureKind::Error, codec::result_too_large(task, size))
            }
            e => failure(FailureKind::EncodeResult, format!("task `{task}`: {e}")),
        })
    }));
    IN_TASK.with(|flag| flag.set(false));
    match outcome {
        Ok(Ok(bytes)) => RResult::ROk(RVec::from(bytes)),
        Ok(Err(failure)) => RResult::RErr(failure),
        Err(payload) => RResult::RErr(failure(FailureKind::Panic, panic_message(&*payload))),
    }
}

/// The body of every task's `describe` function: decode as `A` (or `R`), render as JSON.
pub fn describe<A, R>(bytes: RSlice<'_, u8>, result: bool) -> RResult<RString, RString>
where
    A: DeserializeOwned + Serialize,
    R: DeserializeOwned + Serialize,
{
    fn render<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<String, String> {
        let value: T = codec::decode(bytes).map_err(|e| e.to_string())?;
        serde_json::to_string(&value).map_err(|e| e.to_string())
    }
    let rendered = catch_unwind(AssertUnwindSafe(|| {
        if result {
            render::<R>(bytes.as_slice())
        } else {
            render::<A>(bytes.as_slice())
        }
    }));
    match rendered {
        Ok(Ok(json)) => RResult::ROk(json.into()),
        Ok(Err(e)) => RResult::RErr(e.into()),
        Err(payload) => RResult::RErr(panic_message(&*payload).into()),
    }
}

/// The body of the exported `managers` function.
pub fn managers(list: &[fn() -> Manager]) -> RResult<RVec<ManagerDecl>, RString> {
    let built = catch_unwind(|| {
        list.iter()
            .map(|make| make().to_decl().map_err(|e| e.to_string()))
            .collect::<Result<RVec<_>, _>>()
    });
    match built {
        Ok(Ok(decls)) => RResult::ROk(decls),
        Ok(Err(e)) => RResult::RErr(RString::from(e)),
        Err(payload) => RResult::RErr(RString::from(format!(
            "building the managers {}",
            panic_message(&*payload)
        ))),
    }
}

/// The library's root module, built when a worker loads it.
pub fn root_module(
    managers: extern "C" fn() -> RResult<RVec<ManagerDecl>, RString>,
) -> PluginRootRef {
    install_panic_hook();
    PluginRoot { managers }.leak_into_prefix()
}
