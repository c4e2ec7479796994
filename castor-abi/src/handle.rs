//! [`TaskHandle`]: a dispatched task's id, its state, and its typed result, by blocking
//! [`join`](TaskHandle::join) or by awaiting [`resolve`](TaskHandle::resolve) on any
//! executor. Waiting costs nothing while the task runs: the handle sleeps until the
//! database's change watcher says something was committed, then re-reads the row.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::backend::{Backend, View};
use crate::codec;
use crate::error::{JoinError, StatusError};
use castor_store::TaskState;

/// What [`TaskHandle::info`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskInfo {
    /// The task's state.
    pub state: TaskState,
    /// The task's name.
    pub task: String,
    /// Attempts started so far.
    pub attempt: u32,
    /// Every failed attempt's error, oldest first.
    pub errors: Vec<crate::AttemptError>,
    /// The task's latest progress report, if it made one.
    pub progress: Option<castor_store::Progress>,
}

/// A dispatched task whose result is an `R`.
pub struct TaskHandle<R> {
    id: Uuid,
    task: &'static str,
    /// True when this handle created the task, so a missing row means it was pruned.
    dispatched: bool,
    backend: Arc<dyn Backend>,
    /// The fingerprint of `R` as this build's task declares it (`None`: not checked).
    expected: Option<&'static str>,
    result: PhantomData<fn() -> R>,
}

impl<R> Clone for TaskHandle<R> {
    fn clone(&self) -> Self {
        TaskHandle {
            id: self.id,
            task: self.task,
            dispatched: self.dispatched,
            backend: Arc::clone(&self.backend),
            expected: self.expected,
            result: PhantomData,
        }
    }
}

impl<R> fmt::Debug for TaskHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.id)
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

enum Check<R> {
    Done(Result<R, JoinError>),
    Pending(TaskState),
}

impl<R> TaskHandle<R> {
    pub(crate) fn dispatched(id: Uuid, task: &'static str, backend: Arc<dyn Backend>) -> Self {
        TaskHandle {
            id,
            task,
            dispatched: true,
            backend,
            expected: None,
            result: PhantomData,
        }
    }

    /// Checks a result's fingerprint against `spec`'s before decoding it.
    pub(crate) fn expecting(mut self, spec: &crate::TaskSpec) -> Self {
        self.expected = Some((spec.fingerprints)().result.as_str());
        self
    }

    /// The task's id, for a handle of any `R` (what [`TaskHandle::id`] returns).
    pub(crate) fn id_unchecked(&self) -> Uuid {
        self.id
    }

    /// The fingerprint of `R` this handle checks a result against (`None`: unchecked),
    /// which a task dispatched after this one expects of its result.
    pub(crate) fn expected_fingerprint(&self) -> Option<&'static str> {
        self.expected
    }

    pub(crate) fn attach(id: Uuid, task: &'static str, backend: Arc<dyn Backend>) -> Self {
        TaskHandle {
            id,
            task,
            dispatched: false,
            backend,
            expected: None,
            result: PhantomData,
        }
    }
}

impl<R: DeserializeOwned> TaskHandle<R> {
    /// The task's id (a UUIDv7).
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The task's name.
    pub fn task(&self) -> &'static str {
        self.task
    }

    /// The task's current state.
    ///
    /// # Errors
    /// [`StatusError::NotFound`] if no task has this id (never existed, or pruned), or a
    /// database error.
    pub fn status(&self) -> Result<TaskState, StatusError> {
        Ok(self.view()?.state)
    }

    /// The task's state, attempts so far, every failed attempt's error, and its latest
    /// progress report.
    ///
    /// # Errors
    /// As [`status`](Self::status).
    pub fn info(&self) -> Result<TaskInfo, StatusError> {
        let view = self.view()?;
        Ok(TaskInfo {
            state: view.state,
            task: view.task,
            attempt: view.attempt,
            errors: view.errors,
            progress: view.progress,
        })
    }

    /// Cancels the task. One that has not started never runs; a running one is stopped
    /// (a process task is killed; a thread task sees
    /// [`TaskContext::is_cancelled`](crate::TaskContext::is_cancelled) and should return)
    /// and ends `cancelled` unless it completes first. `join` then returns
    /// [`JoinError::Cancelled`].
    ///
    /// # Errors
    /// [`StatusError::NotFound`], or a database error.
    pub fn cancel(&self) -> Result<castor_store::CancelOutcome, StatusError> {
        self.backend.cancel(self.id)
    }

    /// The task's log: what it logged through its context and, for a process task,
    /// what it printed to stdout (`info`) and stderr (`warn`). The newest lines are kept
    /// when a task logs more than the limit.
    ///
    /// # Errors
    /// A database error; inside a task, logs are not available.
    pub fn logs(&self) -> Result<Vec<castor_store::TaskLog>, StatusError> {
        self.backend.logs(self.id)
    }

    fn view(&self) -> Result<View, StatusError> {
        self.backend
            .view(self.id)?
            .ok_or(StatusError::NotFound { id: self.id })
    }

    fn check(&self) -> Check<R> {
        let view = match self.backend.view(self.id) {
            Ok(Some(view)) => view,
            Ok(None) if self.dispatched => {
                return Check::Done(Err(JoinError::Pruned {
                    id: self.id,
                    task: self.task.to_owned(),
                }));
            }
            Ok(None) => {
                return Check::Done(Err(StatusError::NotFound { id: self.id }.into()));
            }
            Err(e) => return Check::Done(Err(e.into())),
        };
        let task = || view.task.clone();
        match view.state {
            TaskState::Completed => {
                if let (Some(expected), Some(found)) = (self.expected, &view.result_fingerprint)
                    && expected != found
                {
                    return Check::Done(Err(JoinError::IncompatibleResult {
                        id: self.id,
                        task: task(),
                        found: found.clone(),
                        expected: expected.to_owned(),
                    }));
                }
                let bytes = view.result.as_deref().unwrap_or_default();
                Check::Done(
                    codec::decode::<R>(bytes).map_err(|error| JoinError::DecodeResult {
                        id: self.id,
                        task: task(),
                        error,
                    }),
                )
            }
            TaskState::Discarded => {
                let message = view
                    .errors
                    .last()
                    .map_or_else(|| "no error recorded".to_owned(), |e| e.error.clone());
                Check::Done(Err(JoinError::Failed {
                    id: self.id,
                    task: task(),
                    attempts: view.attempt,
                    message,
                    errors: view.errors,
                }))
            }
            TaskState::Cancelled => Check::Done(Err(JoinError::Cancelled {
                id: self.id,
                task: task(),
                reason: view
                    .errors
                    .last()
                    .filter(|e| e.kind == castor_store::ErrorKind::Chain)
                    .map(|e| e.error.clone()),
            })),
            state => Check::Pending(state),
        }
    }

    /// The result if the task has finished, `None` if it has not, without waiting.
    ///
    /// # Errors
    /// As [`join`](Self::join), except that it never times out.
    pub fn try_result(&self) -> Result<Option<R>, JoinError> {
        match self.check() {
            Check::Done(result) => result.map(Some),
            Check::Pending(_) => Ok(None),
        }
    }

    /// Waits up to `timeout` for the task to finish and returns its result.
    ///
    /// # Errors
    /// [`JoinError::Timeout`] if it is still unfinished (it keeps running; join again
    /// later), [`JoinError::Failed`] with every attempt's error if it was discarded,
    /// [`JoinError::Cancelled`], [`JoinError::Pruned`], [`JoinError::DecodeResult`] if the
    /// result does not decode as `R`, or a status error.
    pub fn join(&self, timeout: Duration) -> Result<R, JoinError> {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            let generation = self.backend.generation()?;
            match self.check() {
                Check::Done(result) => return result,
                Check::Pending(state) => {
                    if Instant::now() >= deadline {
                        return Err(JoinError::Timeout {
                            id: self.id,
                            task: self.task.to_owned(),
                            state,
                            waited: start.elapsed(),
                        });
                    }
                }
            }
            self.backend.wait_past(generation, deadline);
        }
    }

    /// A future of the task's result that works on any executor: it registers a waker
    /// with the change watcher, so it needs no runtime of its own. Combine it with your
    /// executor's timeout if you want one.
    pub fn resolve(&self) -> Resolve<R> {
        Resolve {
            handle: self.clone(),
        }
    }
}

/// The future returned by [`TaskHandle::resolve`].
#[must_use = "futures do nothing unless awaited"]
pub struct Resolve<R> {
    handle: TaskHandle<R>,
}

impl<R> fmt::Debug for Resolve<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolve")
            .field("id", &self.handle.id)
            .finish()
    }
}

impl<R: DeserializeOwned> Future for Resolve<R> {
    type Output = Result<R, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let handle = &self.handle;
        // Read the generation first: a change after this point wakes us even if it lands
        // between the check and the registration.
        let generation = match handle.backend.generation() {
            Ok(generation) => generation,
            Err(e) => return Poll::Ready(Err(e.into())),
        };
        match handle.check() {
            Check::Done(result) => Poll::Ready(result),
            Check::Pending(_) => {
                handle.backend.wake_on_change(generation, cx.waker());
                Poll::Pending
            }
        }
    }
}
