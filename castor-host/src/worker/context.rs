//! [`Context`]: what the coordinator and a turn's plan know of the worker they run for,
//! fixed for the worker's run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use castor_abi::abi::HostServices;
use castor_store::{Notifier, ScheduleFilter, TaskFilter};
use crossbeam_channel::Sender;

use super::producer::PerMode;
use super::{Event, TaskInfo};

/// What the coordinator needs from its worker, handed over when the worker runs.
pub(super) struct Context {
    /// This worker run's id.
    pub(super) id: String,
    /// The machine's name (the rescuer finds this machine's dead workers by their pid).
    pub(super) hostname: String,
    /// Where this worker's pids mean something (see [`super::host_id`]): the rescuer
    /// checks the pid of a worker with the same host id.
    pub(super) host_id: String,
    /// The manager whose tasks it runs.
    pub(super) manager: String,
    /// How long a claim is valid without renewal.
    pub(super) lease: Duration,
    /// How long running tasks may take to finish after a stop is requested.
    pub(super) grace: Duration,
    /// Finished tasks are deleted this long after they finish.
    pub(super) retention: Duration,
    /// Pool slots per mode (0 for a mode the library does not declare).
    pub(super) slots: PerMode<usize>,
    /// What each mode's claim selects; `None` for a mode the library does not declare.
    pub(super) claims: PerMode<Option<TaskFilter>>,
    /// The schedules the worker runs.
    pub(super) schedules: ScheduleFilter,
    /// The library's tasks by name.
    pub(super) tasks: HashMap<String, TaskInfo>,
    /// The services thread tasks get.
    pub(super) host: &'static HostServices,
    /// Where the pools send what they produce.
    pub(super) events: Sender<Event>,
    /// What wakes the worker when the database changes.
    pub(super) watcher: Arc<Notifier>,
}
