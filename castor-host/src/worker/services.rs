//! The worker's answers to running tasks: dispatching subtasks and reading tasks on the
//! worker's own connection (so a library never opens the database inside the worker),
//! and forwarding logs and progress to the coordinator, which writes them in its next
//! batch.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use abi_stable::std_types::ROption;
use castor_abi::abi::{DispatchOptionsAbi, SnapshotAbi};
use castor_abi::host::Services;
use castor_abi::store::{NewTask, Store, Watcher, now_us};
use castor_abi::{LogLevel, StoreError, Uuid};
use crossbeam_channel::Sender;

use super::Event;

/// The worker's [`Services`].
pub struct WorkerServices {
    manager: String,
    tasks: Vec<String>,
    store: Mutex<Store>,
    watcher: Arc<Watcher>,
    events: Sender<Event>,
}

impl WorkerServices {
    /// Services for `manager`'s `tasks` on their own connection.
    pub fn new(
        manager: String,
        tasks: Vec<String>,
        store: Store,
        watcher: Arc<Watcher>,
        events: Sender<Event>,
    ) -> WorkerServices {
        WorkerServices {
            manager,
            tasks,
            store: Mutex::new(store),
            watcher,
            events,
        }
    }
}

impl WorkerServices {
    /// The task's message for `error`; a damaged file also stops the worker.
    fn failed(&self, error: StoreError) -> String {
        let message = error.to_string();
        if matches!(error, StoreError::Corrupt { .. }) {
            let _ = self.events.send(Event::Fatal(error));
        }
        message
    }
}

impl Services for WorkerServices {
    fn dispatch(
        &self,
        task: &str,
        args: &[u8],
        options: &DispatchOptionsAbi,
    ) -> Result<Uuid, String> {
        if !self.tasks.iter().any(|t| t == task) {
            return Err(format!(
                "task `{task}` is not declared by manager `{}` (it declares: {})",
                self.manager,
                self.tasks.join(", ")
            ));
        }
        let new = NewTask::with_options(&self.manager, task, args, options);
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        store
            .enqueue(&new)
            .map(|(id, _)| id)
            .map_err(|e| self.failed(e))
    }

    fn snapshot(&self, id: Uuid) -> Result<Option<SnapshotAbi>, String> {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let snapshot = store.snapshot(id).map_err(|e| self.failed(e))?;
        Ok(snapshot.map(|s| SnapshotAbi {
            state: s.state.as_str().into(),
            task: s.task.into(),
            attempt: s.attempt,
            max_attempts: s.max_attempts,
            result: match s.result {
                Some(bytes) => ROption::RSome(bytes.into()),
                None => ROption::RNone,
            },
            errors_json: serde_json::to_string(&s.errors).unwrap_or_default().into(),
        }))
    }

    fn generation(&self) -> u64 {
        self.watcher.generation()
    }

    fn wait_change(&self, since: u64, timeout_ms: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        self.watcher.wait_past(since, deadline)
    }

    fn log(&self, id: Uuid, level: LogLevel, line: &str) {
        let _ = self.events.send(Event::Log {
            id,
            level,
            line: line.to_owned(),
            at: now_us(),
        });
    }

    fn progress(&self, id: Uuid, done: u64, total: u64, message: &str) {
        let _ = self.events.send(Event::Progress {
            id,
            done,
            total,
            message: message.to_owned(),
        });
    }
}
