//! The two ways a dispatch, a status read or a wait can reach the database: an app's own
//! connection ([`Client`](crate::Client)), or, inside a worker, the worker's services
//! across the ABI ([`HostBackend`]). Handles and contexts hold an `Arc<dyn Backend>` and
//! never know which one they have.

use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use abi_stable::std_types::{RResult, RSlice, RStr};
use uuid::Uuid;

use crate::abi::{DispatchOptionsAbi, HostServices};
use crate::error::{DispatchError, StatusError};
use castor_store::{AttemptError, LogLevel, Progress, TaskState};

/// What a handle needs to know about its task.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub state: TaskState,
    pub task: String,
    pub attempt: u32,
    pub result: Option<Vec<u8>>,
    pub errors: Vec<AttemptError>,
    pub progress: Option<Progress>,
    /// The fingerprint of the result's type in the library that produced the result.
    pub result_fingerprint: Option<String>,
}

pub(crate) trait Backend: Send + Sync {
    /// Dispatches one task; returns its id (an existing task's for a taken unique key).
    fn dispatch(
        &self,
        task: &str,
        args: &[u8],
        options: &DispatchOptionsAbi,
    ) -> Result<Uuid, DispatchError>;

    /// Dispatches many tasks of one name, all or nothing where the backend allows.
    /// `keys` holds each task's concurrency partition key, by position (empty: none).
    fn dispatch_many(
        &self,
        task: &str,
        args: &[Vec<u8>],
        keys: &[Option<String>],
        options: &DispatchOptionsAbi,
    ) -> Result<Vec<Uuid>, DispatchError> {
        args.iter()
            .enumerate()
            .map(|(i, args)| match keys.get(i) {
                Some(key) => {
                    let mut options = options.clone();
                    options.concurrency_key = key.clone().map(Into::into).into();
                    self.dispatch(task, args, &options)
                }
                None => self.dispatch(task, args, options),
            })
            .collect()
    }

    /// Dispatches one task to run after `parents` (id, the result fingerprint expected
    /// of it) complete; `args` are its arguments after the first, which the parents'
    /// results make (`fan_in`: as a sequence).
    fn dispatch_after(
        &self,
        task: &str,
        _args: &[u8],
        _options: &DispatchOptionsAbi,
        _parents: &[(Uuid, Option<&'static str>)],
        _fan_in: bool,
    ) -> Result<Uuid, DispatchError> {
        Err(DispatchError::Host {
            task: task.to_owned(),
            message: "tasks are dispatched after others (`delay_after`, `delay_after_all`) \
                      from an app, not from inside a task"
                .into(),
        })
    }

    fn view(&self, id: Uuid) -> Result<Option<View>, StatusError>;

    /// Creates a repeating schedule of `task`.
    fn create_schedule(
        &self,
        task: &str,
        _args: &[u8],
        _schedule: &crate::schedule::ResolvedSchedule,
    ) -> Result<i64, DispatchError> {
        Err(DispatchError::Host {
            task: task.to_owned(),
            message: "schedules are created from an app, not from inside a task".into(),
        })
    }

    /// Reads a schedule.
    fn schedule(&self, id: i64) -> Result<crate::schedule::ScheduleInfo, StatusError> {
        Err(StatusError::NoSchedule { id })
    }

    /// The ids of a schedule's runs.
    fn schedule_runs(&self, id: i64) -> Result<Vec<Uuid>, StatusError> {
        Err(StatusError::NoSchedule { id })
    }

    /// Pauses or resumes a schedule.
    fn set_schedule_paused(&self, id: i64, _paused: bool) -> Result<(), StatusError> {
        Err(StatusError::NoSchedule { id })
    }

    /// Removes a schedule.
    fn remove_schedule(&self, id: i64) -> Result<(), StatusError> {
        Err(StatusError::NoSchedule { id })
    }

    /// Cancels the task.
    fn cancel(&self, id: Uuid) -> Result<castor_store::CancelOutcome, StatusError> {
        Err(StatusError::Host {
            id,
            message: "tasks can be cancelled from an app or the CLI, not from inside a task".into(),
        })
    }

    /// The task's log lines.
    fn logs(&self, id: Uuid) -> Result<Vec<castor_store::TaskLog>, StatusError> {
        Err(StatusError::Host {
            id,
            message: "task logs can be read from an app, not from inside a task".into(),
        })
    }

    fn generation(&self) -> Result<u64, StatusError>;

    fn wait_past(&self, since: u64, deadline: Instant) -> u64;

    fn wake_on_change(&self, since: u64, waker: &Waker);

    fn log(&self, id: Uuid, level: LogLevel, line: &str);

    fn progress(&self, id: Uuid, done: u64, total: u64, message: &str);
}

/// Reaches the database through a worker's [`HostServices`].
pub(crate) struct HostBackend {
    services: &'static HostServices,
}

impl HostBackend {
    /// # Safety
    /// `services` must live for the rest of the process, as the worker guarantees for the
    /// services it passes to tasks.
    pub(crate) unsafe fn shared(services: &HostServices) -> Arc<dyn Backend> {
        // SAFETY: the caller guarantees the services outlive the process's tasks.
        let services: &'static HostServices = unsafe { &*std::ptr::from_ref(services) };
        Arc::new(HostBackend { services })
    }
}

impl Backend for HostBackend {
    fn dispatch(
        &self,
        task: &str,
        args: &[u8],
        options: &DispatchOptionsAbi,
    ) -> Result<Uuid, DispatchError> {
        let s = self.services;
        match (s.dispatch)(s.data, RStr::from(task), RSlice::from(args), options) {
            RResult::ROk(id) => Ok(Uuid::from_bytes(id)),
            RResult::RErr(e) => Err(DispatchError::Host {
                task: task.to_owned(),
                message: e.message.into_string(),
            }),
        }
    }

    fn view(&self, id: Uuid) -> Result<Option<View>, StatusError> {
        let s = self.services;
        let snapshot = match (s.snapshot)(s.data, id.as_bytes()) {
            RResult::ROk(snapshot) => snapshot.into_option(),
            RResult::RErr(e) => {
                return Err(StatusError::Host {
                    id,
                    message: e.message.into_string(),
                });
            }
        };
        let Some(snapshot) = snapshot else {
            return Ok(None);
        };
        let host_error = |message: String| StatusError::Host { id, message };
        let state = snapshot
            .state
            .as_str()
            .parse::<TaskState>()
            .map_err(|e| host_error(e.to_string()))?;
        let errors = if snapshot.errors_json.is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(snapshot.errors_json.as_str())
                .map_err(|e| host_error(format!("invalid errors column: {e}")))?
        };
        Ok(Some(View {
            state,
            task: snapshot.task.into_string(),
            attempt: snapshot.attempt,
            result: snapshot.result.into_option().map(|r| r.into_vec()),
            errors,
            progress: None,
            result_fingerprint: Some(snapshot.result_fingerprint.into_string())
                .filter(|fp| !fp.is_empty()),
        }))
    }

    fn generation(&self) -> Result<u64, StatusError> {
        Ok((self.services.generation)(self.services.data))
    }

    fn wait_past(&self, since: u64, deadline: Instant) -> u64 {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        (self.services.wait_change)(self.services.data, since, timeout_ms.max(1))
    }

    fn wake_on_change(&self, since: u64, waker: &Waker) {
        // The worker's wait is blocking; a short-lived thread turns it into a wake-up.
        let services = self.services;
        let wake = waker.clone();
        let spawned = std::thread::Builder::new()
            .name("castor-resolve".into())
            .spawn(move || {
                (services.wait_change)(services.data, since, 1000);
                wake.wake();
            });
        if spawned.is_err() {
            // No thread to wait on: poll again shortly rather than never.
            std::thread::sleep(Duration::from_millis(1));
            waker.wake_by_ref();
        }
    }

    fn log(&self, id: Uuid, level: LogLevel, line: &str) {
        (self.services.log)(
            self.services.data,
            id.as_bytes(),
            level as u8,
            RStr::from(line),
        );
    }

    fn progress(&self, id: Uuid, done: u64, total: u64, message: &str) {
        (self.services.progress)(
            self.services.data,
            id.as_bytes(),
            done,
            total,
            RStr::from(message),
        );
    }
}
