//! The worker's answers to running tasks: dispatching subtasks and reading tasks on the
//! worker's own connection (so a library never opens the database inside the worker),
//! and forwarding logs and progress to the coordinator, which writes them in its next
//! batch.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::host::Services;
use crate::protocol::{Payload, Snapshot};
use castor_abi::abi::DispatchOptionsAbi;
use castor_abi::{Uuid, codec};
use castor_store::{LogLevel, StoreError};
use castor_store::{Notifier, Store, now_us};
use crossbeam_channel::Sender;

use super::Event;
// `DispatchOptionsAbi::new_task`.
use castor_abi::__private::NewTaskFromAbi as _;

/// The worker's [`Services`].
pub struct WorkerServices {
    manager: String,
    tasks: Vec<String>,
    store: Mutex<Store>,
    watcher: Arc<Notifier>,
    events: Sender<Event>,
}

impl WorkerServices {
    /// Services for `manager`'s `tasks` on their own connection.
    pub fn new(
        manager: String,
        tasks: Vec<String>,
        store: Store,
        watcher: Arc<Notifier>,
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
        // A library's glue refuses such arguments; one built against an older castor-abi
        // may not.
        if args.len() > codec::MAX_PAYLOAD {
            return Err(codec::args_too_large(task, args.len()));
        }
        let new = options.new_task(&self.manager, task, args);
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        store
            .enqueue(&new)
            .map(|enqueued| enqueued.id)
            .map_err(|e| self.failed(e))
    }

    fn snapshot(&self, id: Uuid) -> Result<Option<Snapshot>, String> {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let snapshot = store.snapshot(id).map_err(|e| self.failed(e))?;
        Ok(snapshot.map(|s| Snapshot {
            state: s.state,
            task: s.task,
            attempt: s.attempt,
            max_attempts: s.max_attempts,
            result: s.result.map(Payload),
            errors_json: serde_json::to_string(&s.errors).unwrap_or_default(),
            result_fingerprint: s.result_fingerprint.unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use abi_stable::std_types::ROption;
    use castor_store::OpenOptions;

    use super::*;

    /// A library built against an older castor-abi may send arguments its glue did not
    /// check; the worker refuses them before they reach the database.
    #[test]
    fn arguments_over_the_limit_from_a_task_are_refused_at_the_worker() {
        let dir = std::env::temp_dir().join(format!("castor-services-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let db = dir.join("tasks.db");
        let store = Store::open(&db, OpenOptions::app()).expect("open");
        let watcher = Arc::new(castor_store::notifier(&db.clone().into()).expect("watch"));
        let (events, _queue) = crossbeam_channel::unbounded();
        let services = WorkerServices::new(
            "manager".into(),
            vec!["echo".into()],
            store,
            watcher,
            events,
        );
        let options = DispatchOptionsAbi {
            run_at_us: ROption::RNone,
            priority: 0,
            unique_key: ROption::RNone,
            max_attempts: 1,
            timeout_ms: ROption::RNone,
            backoff_base_ms: 10,
            backoff_cap_ms: 10,
            args_fingerprint: "".into(),
            concurrency_key: ROption::RNone,
        };
        let over = vec![0u8; codec::MAX_PAYLOAD + 1];
        let refused = services
            .dispatch("echo", &over, &options)
            .expect_err("over the limit");
        assert_eq!(refused, codec::args_too_large("echo", over.len()));
        let small = vec![0u8; 16];
        services
            .dispatch("echo", &small, &options)
            .expect("within the limit");
        let store = Store::open(&db, OpenOptions::app()).expect("open");
        assert_eq!(store.unfinished("manager").expect("count"), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
