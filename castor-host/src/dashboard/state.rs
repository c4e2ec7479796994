//! The dashboard's data: everything the view draws, as one plain value the worker fills in.
//!
//! The worker owns a [`DashboardState`] and feeds it what happens (`task_started`,
//! `task_progress`, `task_finished`, `log`), what it reads from the database now and
//! then (`set_counts`, `set_workers`, `set_schedules`, `set_scheduled`,
//! `set_oldest_available`, `set_pool_busy`) and the passing of time (`advance`). Keys arrive as [`Action`]s (see `input`) and
//! [`DashboardState::apply`] turns them into UI changes, or into a [`Command`] the worker
//! carries out. Nothing here reads a clock, the terminal or the database, so each method
//! is a plain function of its inputs (tested below) and the view can be snapshot-tested
//! over hand-built values.
//!
//! Everything that grows is bounded: [`RECENT_CAPACITY`] finished attempts,
//! [`LOG_CAPACITY`] log lines, [`THROUGHPUT_SECONDS`] throughput and failure samples,
//! [`STATS_SAMPLE`] durations per task name and [`SCHEDULED_CAPACITY`] waiting tasks. Text
//! from tasks (log lines, errors, names) is cleaned of terminal escapes and control
//! characters on the way in: a plugin that prints colour codes must not be able to
//! repaint the screen.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use castor_abi::{TaskMode, Uuid};
use castor_store::{LogLevel, TaskState};

use super::input::Action;
use super::panels::panel;

/// How many finished attempts the recent list keeps.
pub const RECENT_CAPACITY: usize = 200;
/// How many log lines the log pane keeps (a multi-line message counts once per line).
pub const LOG_CAPACITY: usize = 2000;
/// How many one-second throughput samples the sparkline keeps.
pub const THROUGHPUT_SECONDS: usize = 120;
/// How many of the latest durations per task name the mean, p50 and p95 are computed over.
pub const STATS_SAMPLE: usize = 1000;
/// The current rate is the mean of this many latest one-second samples.
pub const RATE_SECONDS: usize = 5;
/// How long a flash message stays in the footer.
pub const FLASH_FOR: Duration = Duration::from_secs(5);
/// How far PageUp and PageDown move a selection.
pub const PAGE: usize = 10;
/// How many waiting tasks (those with a start time to come) the Schedules pane keeps: the
/// soonest ones.
pub const SCHEDULED_CAPACITY: usize = 50;

/// What the header shows about this worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// The task library's path.
    pub library: String,
    /// The manager's name.
    pub manager: String,
    /// The database path.
    pub database: String,
    /// This worker's id (32 hex digits).
    pub worker_id: String,
    /// Time since the worker started; grows with [`DashboardState::advance`].
    pub uptime: Duration,
    /// Thread-pool size.
    pub threads: usize,
    /// Thread tasks running now.
    pub threads_busy: usize,
    /// How many process tasks may run at once.
    pub processes: usize,
    /// Process tasks running now.
    pub processes_busy: usize,
}

/// A running task's last progress report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all; 0 when the task does not know (shown as a count, not a percentage).
    pub total: u64,
    /// What the task says it is doing, if anything.
    pub message: Option<String>,
}

/// Where an attempt this worker claimed is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Claimed (the task is `running` in the database), but waiting in its pool's queue
    /// for a free thread or child slot: it has not begun.
    Waiting,
    /// Running on a thread or in a child.
    Running,
}

/// An attempt this worker claimed: running, or waiting for a slot to run in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningTask {
    /// The task's id.
    pub id: Uuid,
    /// The task's name.
    pub task: String,
    /// Which pool runs it: its slots are what the header's meters count.
    pub mode: TaskMode,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// Whether it has begun; [`DashboardState::task_running`] moves it on.
    pub phase: Phase,
    /// How long the attempt has run: zero while it waits, then grows with
    /// [`DashboardState::advance`].
    pub elapsed: Duration,
    /// The last progress report, if the task made one.
    pub progress: Option<Progress>,
}

/// An attempt that ended, newest first in [`DashboardState::recent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedTask {
    /// The task's id.
    pub id: Uuid,
    /// The task's name.
    pub task: String,
    /// The task's state after the attempt: `Completed`, `Retryable`, `Discarded` or
    /// `Cancelled`.
    pub state: TaskState,
    /// The attempt's number.
    pub attempt: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// How long the attempt ran.
    pub duration: Duration,
    /// The attempt's error, for any state but `completed`; may span lines.
    pub error: Option<String>,
    /// When it ended, preformatted by the worker (`HH:MM:SS`).
    pub at: String,
}

/// One row of the per-task-name statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStats {
    /// The task's name.
    pub task: String,
    /// Attempts finished since the worker started.
    pub count: u64,
    /// How many of them failed (the task became `retryable` or `discarded`).
    pub failures: u64,
    /// Mean duration over the latest [`STATS_SAMPLE`] attempts.
    pub mean: Duration,
    /// Median duration over the same sample (nearest rank).
    pub p50: Duration,
    /// 95th-percentile duration over the same sample (nearest rank).
    pub p95: Duration,
}

/// A log line's level. `Output` is what a task printed (stdout or stderr), as opposed to
/// what it logged through its context or what the worker itself reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// Detail for debugging.
    Debug,
    /// Normal progress.
    Info,
    /// Something odd that did not stop anything.
    Warn,
    /// Something failed: a task's error, a panic, a database error.
    Error,
    /// A line a task printed.
    Output,
}

impl From<LogLevel> for Level {
    fn from(level: LogLevel) -> Level {
        match level {
            LogLevel::Debug => Level::Debug,
            LogLevel::Info => Level::Info,
            LogLevel::Warn => Level::Warn,
            LogLevel::Error => Level::Error,
        }
    }
}

impl Level {
    /// The short name the log pane shows.
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Output => "out",
        }
    }
}

/// Who a log line is from; the view names it (`worker`, `send_email 2c3d4e5f`, ..).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The worker itself.
    Worker,
    /// The task library, outside any task (a `log` or `tracing` record on a thread of its
    /// own).
    Library,
    /// A task, while it runs.
    Task {
        /// The task's name.
        task: String,
        /// The task's id.
        id: Uuid,
    },
    /// A process-mode child, outside any task: what it printed between tasks.
    Child {
        /// The child's process id.
        pid: u32,
    },
    /// Whatever reached the worker's own stdout or stderr: a thread task's prints, a
    /// panic message.
    Output,
}

/// One line of the log pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When, preformatted by the worker (`HH:MM:SS`).
    pub at: String,
    /// How serious.
    pub level: Level,
    /// Who.
    pub source: Source,
    /// The line itself (one line: [`DashboardState::log`] splits longer text).
    pub text: String,
}

/// A worker on the same database, this one included, as its row says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker's id (32 hex digits); equal to [`Header::worker_id`] for this one.
    pub id: String,
    /// The host it runs on.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// The manager it serves.
    pub manager: String,
    /// Time since its last heartbeat; grows with [`DashboardState::advance`] between two
    /// [`DashboardState::set_workers`].
    pub last_heartbeat_ago: Duration,
    /// Whether its heartbeat is recent enough for its lease to hold.
    pub alive: bool,
    /// Tasks it completed.
    pub completed: u64,
    /// Attempts of it that failed.
    pub failed: u64,
}

/// A schedule, as its row says: a task dispatched again and again, at an interval or on
/// a cron expression, until it has run `times` times (if set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow {
    /// The schedule's id, what [`Command::PauseSchedule`] and the others name.
    pub id: i64,
    /// The task each run is.
    pub task: String,
    /// A periodic task's name (declared with the manager); `None` for a schedule an app
    /// created.
    pub name: Option<String>,
    /// When it ticks, preformatted by the worker: `every 1.0s`, `cron 0 9 * * 1-5`.
    pub cadence: String,
    /// Runs created so far.
    pub runs: u32,
    /// The run limit, if any.
    pub times: Option<u32>,
    /// Time until its next run; `None` once it is finished (no run to come). Counts down
    /// with [`DashboardState::advance`] between two [`DashboardState::set_schedules`],
    /// stopping at zero ("due").
    pub next_run_in: Option<Duration>,
    /// Whether it is paused: no run is created while it is.
    pub paused: bool,
}

/// A task waiting to start: for its start time (state `scheduled`: a delayed dispatch or
/// a schedule's run made ahead of time), or on its parents (state `waiting`: dispatched
/// with `delay_after`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledTask {
    /// The task's id.
    pub id: Uuid,
    /// The task's name.
    pub task: String,
    /// Time until it may start; counts down with [`DashboardState::advance`] between two
    /// [`DashboardState::set_scheduled`], stopping at zero ("due"). Zero for a task
    /// waiting on its parents.
    pub runs_in: Duration,
    /// For a task waiting on its parents, the parent it waits on (the first not
    /// completed), with how many more: `render +2`.
    pub after: Option<String>,
}

impl ScheduledTask {
    /// What a task waiting on `parents` shows: the first parent not completed, and how
    /// many more are not.
    pub fn after_parents(parents: &[castor_store::ParentInfo]) -> String {
        let mut open = parents
            .iter()
            .filter(|p| p.state != Some(castor_store::TaskState::Completed));
        match open.next() {
            None => "its parents".to_owned(),
            Some(first) => match open.count() {
                0 => first.task.clone(),
                more => format!("{} +{more}", first.task),
            },
        }
    }
}

/// A pane that can take the focus, in Tab order (reading order on screen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Pane {
    /// Running tasks; `c` cancels the selected one.
    #[default]
    Running,
    /// Recently finished attempts; `r` retries the selected one.
    Recent,
    /// Per-task-name statistics.
    Stats,
    /// Workers on the same database.
    Workers,
    /// Schedules, and the tasks waiting for their start time; `p` pauses or resumes the
    /// selected schedule, `x` (twice) removes it.
    Schedules,
    /// The log.
    Logs,
    /// Tasks waiting for their start time: shown, never focused (nothing acts on them).
    Waiting,
    /// The concurrency and rate limits in force and what they hold back: shown when some
    /// task has one, never focused.
    Limits,
}

impl Pane {
    /// Every pane that takes the focus, in Tab order.
    pub const ALL: [Pane; 6] = [
        Pane::Running,
        Pane::Recent,
        Pane::Stats,
        Pane::Workers,
        Pane::Schedules,
        Pane::Logs,
    ];

    /// The pane after this one, wrapping around.
    pub fn next(self) -> Pane {
        Pane::ALL[(self.index() + 1) % Pane::ALL.len()]
    }

    /// The pane before this one, wrapping around.
    pub fn prev(self) -> Pane {
        Pane::ALL[(self.index() + Pane::ALL.len() - 1) % Pane::ALL.len()]
    }

    /// The pane's title.
    pub const fn title(self) -> &'static str {
        match self {
            Pane::Running => "Running",
            Pane::Recent => "Recent",
            Pane::Stats => "Tasks by name",
            Pane::Workers => "Workers",
            Pane::Schedules => "Schedules",
            Pane::Logs => "Log",
            Pane::Waiting => "Waiting to start",
            Pane::Limits => "Limits",
        }
    }

    fn index(self) -> usize {
        match self {
            Pane::Running => 0,
            Pane::Recent => 1,
            Pane::Stats => 2,
            Pane::Workers => 3,
            Pane::Schedules => 4,
            Pane::Logs => 5,
            // Not in Tab order: Tab from it goes on from Schedules, which shows it.
            Pane::Waiting | Pane::Limits => 4,
        }
    }
}

/// A task with a limit in force, as the Limits panel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitLine {
    /// The task's name.
    pub task: String,
    /// The limits in force and where they come from (`concurrency 2 (declared)`, ...).
    pub limits: String,
    /// Attempts running that count against it, across all workers.
    pub running: u64,
    /// Its available tasks.
    pub available: u64,
    /// Why its available tasks wait (`held: rate 20/s, next slot in 0.3 s`), if a limit
    /// holds them.
    pub held: Option<String>,
}

/// A finished attempt in [`DashboardState::recent`]: a task may appear there once per
/// attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttemptKey {
    /// The task's id.
    pub id: Uuid,
    /// The attempt's number.
    pub attempt: u32,
}

/// Where each pane's selection is. The panes whose keys act on a task (`c`, `r`) select
/// it by id, so rows that arrive or leave never slide another task under the selection;
/// the other table panes count rows from the top; the log counts lines up from the
/// newest, so 0 follows the log as it grows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// The selected task in [`DashboardState::running`], by id; `None` only while the
    /// list is empty. When it leaves, the row that takes its place is selected.
    pub running: Option<Uuid>,
    /// The selected attempt in [`DashboardState::recent`]; `None` follows the newest
    /// (row 0), which it does only while the pane is not focused: focusing it pins the
    /// row shown, so `r` and `c` act on what the user saw.
    pub recent: Option<AttemptKey>,
    /// Row in the statistics.
    pub stats: usize,
    /// Row in [`DashboardState::workers`].
    pub workers: usize,
    /// Row in [`DashboardState::schedules`]; stays on the same schedule (by id) across
    /// [`DashboardState::set_schedules`].
    pub schedules: usize,
    /// Lines up from the newest log line; 0 follows the log.
    pub log_back: usize,
}

/// A short message in the footer, gone after [`FLASH_FOR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    /// Its colour: `Info` for confirmations, `Warn` for "cannot do that".
    pub level: Level,
    /// The message.
    pub text: String,
    /// Time left on screen.
    pub remaining: Duration,
}

/// What the worker must do after a key, outside the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Command {
    /// Stop gracefully; if a stop is already under way ([`DashboardState::stopping`] is
    /// set), stop now.
    Quit,
    /// Make this discarded or cancelled task `available` again.
    Retry {
        /// The task's id.
        id: Uuid,
    },
    /// Cancel this task (running, or waiting to be retried).
    Cancel {
        /// The task's id.
        id: Uuid,
    },
    /// Pause this schedule: it creates no run until resumed.
    PauseSchedule {
        /// The schedule's id ([`ScheduleRow::id`]).
        id: i64,
    },
    /// Resume this paused schedule.
    ResumeSchedule {
        /// The schedule's id.
        id: i64,
    },
    /// Delete this schedule; the runs it already created stay. The user confirmed it (a
    /// second `x`).
    RemoveSchedule {
        /// The schedule's id.
        id: i64,
    },
}

/// Everything the dashboard shows, and where the user is in it.
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardState {
    /// The header's facts about this worker.
    pub header: Header,
    /// Task count per state over the whole database, every state in [`TaskState::ALL`]
    /// order.
    pub counts: [(TaskState, u64); TaskState::ALL.len()],
    /// Tasks this worker completed in each of the last seconds, oldest first.
    pub throughput: VecDeque<u64>,
    /// Attempts of this worker that failed (retryable or discarded) in each of the same
    /// seconds, oldest first: the failure sparkline.
    pub failures: VecDeque<u64>,
    /// How long the oldest `available` task of this manager has waited to be claimed, as
    /// last read (aged by [`DashboardState::advance`] between reads); `None` when no task
    /// is available.
    pub oldest_available: Option<Duration>,
    /// Available tasks that live workers leave for a worker of their signature (their
    /// arguments' type fingerprint), per task name: (name, count).
    pub waiting_for_signature: Vec<(String, u64)>,
    /// Completed per second now: the mean of the last [`RATE_SECONDS`] samples.
    pub rate: f64,
    /// Attempts running on this worker, oldest start first.
    pub running: Vec<RunningTask>,
    /// Attempts that ended, newest first, at most [`RECENT_CAPACITY`].
    pub recent: VecDeque<FinishedTask>,
    /// Per-task-name statistics.
    pub stats: StatsAccumulator,
    /// The log, oldest first, at most [`LOG_CAPACITY`] lines.
    pub logs: VecDeque<LogLine>,
    /// Workers on the same database, as last read.
    pub workers: Vec<WorkerInfo>,
    /// Schedules, as last read, in the order given (by id).
    pub schedules: Vec<ScheduleRow>,
    /// Tasks waiting for their start time, soonest first, at most [`SCHEDULED_CAPACITY`].
    pub scheduled: Vec<ScheduledTask>,
    /// The manager's tasks with a concurrency or rate limit in force, by name.
    pub limits: Vec<LimitLine>,
    /// The pane the keys act on.
    pub focus: Pane,
    /// Each pane's selection.
    pub selection: Selection,
    /// Whether the key help is open.
    pub show_help: bool,
    /// The footer's message, if any.
    pub flash: Option<Flash>,
    /// Set while a graceful stop is under way: what the footer says about it.
    pub stopping: Option<String>,
    completed_this_second: u64,
    failed_this_second: u64,
    since_sample: Duration,
    /// The schedule a first `x` asked to remove, while its "press x again" flash shows.
    pub(super) pending_removal: Option<i64>,
    /// The running task a `c` asked to cancel, while its "y/n" flash shows.
    pub(super) pending_cancel: Option<Uuid>,
}

impl DashboardState {
    /// An empty dashboard for a worker that has just started.
    pub fn new(header: Header) -> DashboardState {
        DashboardState {
            header,
            counts: TaskState::ALL.map(|s| (s, 0)),
            throughput: VecDeque::with_capacity(THROUGHPUT_SECONDS),
            failures: VecDeque::with_capacity(THROUGHPUT_SECONDS),
            oldest_available: None,
            waiting_for_signature: Vec::new(),
            rate: 0.0,
            running: Vec::new(),
            recent: VecDeque::with_capacity(RECENT_CAPACITY),
            stats: StatsAccumulator::default(),
            logs: VecDeque::with_capacity(LOG_CAPACITY),
            workers: Vec::new(),
            schedules: Vec::new(),
            scheduled: Vec::new(),
            limits: Vec::new(),
            focus: Pane::default(),
            selection: Selection::default(),
            show_help: false,
            flash: None,
            stopping: None,
            completed_this_second: 0,
            failed_this_second: 0,
            since_sample: Duration::ZERO,
            pending_removal: None,
            pending_cancel: None,
        }
    }

    /// This worker claimed an attempt (or, with [`Phase::Running`], one began at once). A
    /// task already listed with the same id is replaced (its earlier attempt's end was
    /// missed). Running attempts come first, in the order they began, then the waiting
    /// ones in the order they were claimed.
    pub fn task_started(&mut self, task: RunningTask) {
        if let Some(index) = self.running.iter().position(|r| r.id == task.id) {
            self.running.remove(index);
        }
        let at = match task.phase {
            Phase::Running => self.running_count(),
            Phase::Waiting => self.running.len(),
        };
        self.running.insert(at, task);
        if self.selection.running.is_none() {
            self.selection.running = self.running.first().map(|t| t.id);
        }
    }

    /// A claimed attempt began running `elapsed` ago (it waited for a slot until then);
    /// ignored if the task is not listed or already running.
    pub fn task_running(&mut self, id: Uuid, elapsed: Duration) {
        let Some(index) = self
            .running
            .iter()
            .position(|r| r.id == id && r.phase == Phase::Waiting)
        else {
            return;
        };
        let mut task = self.running.remove(index);
        task.phase = Phase::Running;
        task.elapsed = elapsed;
        let at = self.running_count();
        self.running.insert(at, task);
    }

    /// How many listed attempts are running (not waiting for a slot).
    pub fn running_count(&self) -> usize {
        self.running
            .iter()
            .filter(|t| t.phase == Phase::Running)
            .count()
    }

    /// A running task reported progress; ignored if the task is not listed.
    pub fn task_progress(&mut self, id: Uuid, progress: Progress) {
        if let Some(task) = self.running.iter_mut().find(|r| r.id == id) {
            let message = progress.message.map(|m| clean(&m).replace('\n', " "));
            task.progress = Some(Progress {
                message: message.filter(|m| !m.is_empty()),
                ..progress
            });
        }
    }

    /// An attempt ended: it leaves the running list, goes on top of the recent list and
    /// into the statistics, and counts towards throughput if it completed.
    ///
    /// Selections stay on the tasks they were on. If the selected running task is the one
    /// that ended, the row that takes its place is selected. The recent list follows its
    /// newest row only while it is not focused and was following; if the selected
    /// attempt drops off its end, the last row is selected.
    pub fn task_finished(&mut self, mut task: FinishedTask) {
        if let Some(index) = self.running.iter().position(|r| r.id == task.id) {
            self.running.remove(index);
            if self.selection.running == Some(task.id) {
                let next = index.min(self.running.len().saturating_sub(1));
                self.selection.running = self.running.get(next).map(|t| t.id);
            }
        }
        if self.focus == Pane::Recent && self.selection.recent.is_none() {
            self.selection.recent = self.recent.front().map(key_of);
        }
        self.stats
            .record(&task.task, task.duration, counts_as_failure(task.state));
        if task.state == TaskState::Completed {
            self.completed_this_second += 1;
        }
        if counts_as_failure(task.state) {
            self.failed_this_second += 1;
        }
        task.error = task.error.as_deref().map(clean);
        self.recent.push_front(task);
        self.recent.truncate(RECENT_CAPACITY);
        self.clamp_selection();
    }

    /// Adds a log line. Text over several lines becomes several lines; terminal escapes
    /// and control characters are dropped and tabs become spaces. While the log is
    /// scrolled back, the view stays on the same lines.
    pub fn log(&mut self, line: LogLine) {
        let LogLine {
            at,
            level,
            source,
            text,
        } = line;
        let text = clean(&text);
        let source = match source {
            Source::Task { task, id } => Source::Task {
                task: one_line(&task),
                id,
            },
            other => other,
        };
        let mut parts: Vec<&str> = text.lines().collect();
        if parts.is_empty() {
            parts.push("");
        }
        for part in parts {
            self.logs.push_back(LogLine {
                at: at.clone(),
                level,
                source: source.clone(),
                text: part.to_owned(),
            });
            if self.selection.log_back > 0 {
                self.selection.log_back += 1;
            }
        }
        while self.logs.len() > LOG_CAPACITY {
            self.logs.pop_front();
        }
        self.clamp_selection();
    }

    /// Replaces the counts by state with the sums of a `(state, count)` list, such as a
    /// count grouped by manager, task name and state; a state missing from it counts 0.
    pub fn set_counts(&mut self, counts: impl IntoIterator<Item = (TaskState, u64)>) {
        for (_, n) in &mut self.counts {
            *n = 0;
        }
        for (state, n) in counts {
            if let Some((_, slot)) = self.counts.iter_mut().find(|(s, _)| *s == state) {
                *slot = slot.saturating_add(n);
            }
        }
    }

    /// Replaces the list of workers.
    pub fn set_workers(&mut self, workers: Vec<WorkerInfo>) {
        self.workers = workers;
        self.clamp_selection();
    }

    /// Replaces the list of schedules (for example `Store::schedules` of this manager).
    /// The selection stays on the schedule it was on, if that is still listed. Names and
    /// cadences are cleaned like log text.
    pub fn set_schedules(&mut self, schedules: Vec<ScheduleRow>) {
        let selected = self.selected_schedule().map(|s| s.id);
        self.schedules = schedules
            .into_iter()
            .map(|s| ScheduleRow {
                task: one_line(&s.task),
                name: s.name.as_deref().map(one_line),
                cadence: one_line(&s.cadence),
                ..s
            })
            .collect();
        if let Some(row) = selected.and_then(|id| self.schedules.iter().position(|s| s.id == id)) {
            self.selection.schedules = row;
        }
        self.clamp_selection();
    }

    /// Replaces the tasks waiting for their start time. They are sorted soonest first and
    /// only the first [`SCHEDULED_CAPACITY`] are kept, so passing more than that costs
    /// nothing but the sort.
    /// Sets the tasks with a limit in force, as just read (sorted by name).
    pub fn set_limits(&mut self, mut limits: Vec<LimitLine>) {
        limits.sort_by(|a, b| a.task.cmp(&b.task));
        self.limits = limits;
    }

    pub fn set_scheduled(&mut self, mut tasks: Vec<ScheduledTask>) {
        // Tasks with a start time first, then those waiting on their parents.
        tasks.sort_by_key(|t| (t.after.is_some(), t.runs_in));
        tasks.truncate(SCHEDULED_CAPACITY);
        for t in &mut tasks {
            t.task = one_line(&t.task);
        }
        self.scheduled = tasks;
    }

    /// How long the oldest available task has waited (`None`: none is available), as just
    /// read.
    /// Sets the tasks waiting for a worker of their signature, (name, count).
    pub fn set_waiting_for_signature(&mut self, mut waiting: Vec<(String, u64)>) {
        waiting.sort();
        self.waiting_for_signature = waiting;
    }

    pub fn set_oldest_available(&mut self, age: Option<Duration>) {
        self.oldest_available = age;
    }

    /// How many thread and process slots are busy now.
    pub fn set_pool_busy(&mut self, threads_busy: usize, processes_busy: usize) {
        self.header.threads_busy = threads_busy;
        self.header.processes_busy = processes_busy;
    }

    /// Shows a message in the footer for [`FLASH_FOR`], replacing any other; for example
    /// the outcome of a [`Command`]. A removal waiting for its second `x`, or a cancel
    /// waiting for its `y`, is called off, since its prompt is gone.
    pub fn flash(&mut self, level: Level, text: impl Into<String>) {
        self.pending_removal = None;
        self.pending_cancel = None;
        self.flash = Some(Flash {
            level,
            text: clean(&text.into()).replace('\n', " "),
            remaining: FLASH_FOR,
        });
    }

    /// Time passed: `dt` since the last call. Call it before each draw, with the time
    /// measured between calls (so the sum is exact). Ages uptimes, elapsed times and
    /// heartbeats, counts down the time to schedules' next runs and waiting tasks' starts,
    /// expires the flash message (and with it a removal waiting for its second `x`), takes
    /// a throughput sample for each whole second, and brings the statistics up to date.
    pub fn advance(&mut self, dt: Duration) {
        self.header.uptime = self.header.uptime.saturating_add(dt);
        for task in &mut self.running {
            if task.phase == Phase::Running {
                task.elapsed = task.elapsed.saturating_add(dt);
            }
        }
        for worker in &mut self.workers {
            worker.last_heartbeat_ago = worker.last_heartbeat_ago.saturating_add(dt);
        }
        for schedule in &mut self.schedules {
            if let Some(next) = &mut schedule.next_run_in {
                *next = next.saturating_sub(dt);
            }
        }
        for task in &mut self.scheduled {
            task.runs_in = task.runs_in.saturating_sub(dt);
        }
        if let Some(age) = &mut self.oldest_available {
            *age = age.saturating_add(dt);
        }
        if let Some(flash) = &mut self.flash {
            flash.remaining = flash.remaining.saturating_sub(dt);
            if flash.remaining.is_zero() {
                self.flash = None;
                self.pending_removal = None;
                self.pending_cancel = None;
            }
        }
        self.since_sample = self.since_sample.saturating_add(dt);
        let second = Duration::from_secs(1);
        // A long stall gives one sample with its completions and zeros after it, which is
        // what a rate over that time would show anyway; past the window it changes nothing.
        let mut samples = 0;
        while self.since_sample >= second && samples < THROUGHPUT_SECONDS {
            self.since_sample -= second;
            let completed = std::mem::take(&mut self.completed_this_second);
            let failed = std::mem::take(&mut self.failed_this_second);
            self.push_throughput(completed, failed);
            samples += 1;
        }
        if samples == THROUGHPUT_SECONDS {
            self.since_sample = Duration::ZERO;
        }
        self.stats.refresh();
    }

    /// Does what a key asked: moves the focus or a selection, opens or closes the help,
    /// or returns what the worker must do. A retry, cancel, pause or removal that does not
    /// apply to the selection sets a flash message saying why instead.
    ///
    /// Removing a schedule takes two `x` in a row: the first only asks for the second (in
    /// the flash); the second removes the schedule if it is still the one selected and the
    /// flash is still showing. Any other action calls the removal off and clears its flash.
    ///
    /// Cancelling a task that runs (or waits for a slot) asks first: `c` names it in the
    /// flash, `y` cancels that task (wherever the selection has gone since), `n` or Esc
    /// declines; any other action, or the flash's going, calls it off.
    pub fn apply(&mut self, action: Action) -> Option<Command> {
        if action != Action::RemoveSelected && self.pending_removal.take().is_some() {
            self.flash = None;
        }
        if !matches!(action, Action::Confirm | Action::Decline)
            && self.pending_cancel.take().is_some()
        {
            self.flash = None;
        }
        match action {
            Action::Quit => return Some(Command::Quit),
            Action::NextPane => self.set_focus(self.focus.next()),
            Action::PrevPane => self.set_focus(self.focus.prev()),
            Action::ToggleHelp => self.show_help = !self.show_help,
            Action::Up => self.move_selection(Move::Back(1)),
            Action::Down => self.move_selection(Move::Forward(1)),
            Action::PageUp => self.move_selection(Move::Back(PAGE)),
            Action::PageDown => self.move_selection(Move::Forward(PAGE)),
            Action::Top => self.move_selection(Move::First),
            Action::Bottom => self.move_selection(Move::Last),
            Action::RetrySelected
            | Action::CancelSelected
            | Action::TogglePauseSelected
            | Action::RemoveSelected => {
                return match panel(self.focus).handle(self, action) {
                    Some(command) => command,
                    None => {
                        self.flash(Level::Warn, where_it_works(action));
                        None
                    }
                };
            }
            Action::Confirm => return self.confirm_cancel(),
            Action::Decline => {
                if self.pending_cancel.take().is_some() {
                    self.flash = None;
                }
            }
        }
        None
    }

    /// The running task under the selection, if the list is not empty.
    pub fn selected_running(&self) -> Option<&RunningTask> {
        self.running.get(self.selected_row(Pane::Running))
    }

    /// The finished attempt under the selection, if the list is not empty.
    pub fn selected_recent(&self) -> Option<&FinishedTask> {
        self.recent.get(self.selected_row(Pane::Recent))
    }

    /// The row of a table pane's selection (0 for an empty pane); for the log, the lines
    /// back from the newest.
    pub fn selected_row(&self, pane: Pane) -> usize {
        let s = &self.selection;
        match pane {
            Pane::Running => s
                .running
                .and_then(|id| self.running.iter().position(|t| t.id == id))
                .unwrap_or(0),
            Pane::Recent => s
                .recent
                .as_ref()
                .and_then(|key| self.recent.iter().position(|t| key_of(t) == *key))
                .unwrap_or(0),
            Pane::Stats => s.stats,
            Pane::Workers => s.workers,
            Pane::Schedules => s.schedules,
            Pane::Logs => s.log_back,
            Pane::Waiting | Pane::Limits => 0,
        }
    }

    /// Focuses `pane`. Focusing Recent pins the row it shows, so that a finished attempt
    /// arriving now does not slide under the selection; leaving it on its newest row lets
    /// it follow new arrivals again.
    fn set_focus(&mut self, pane: Pane) {
        if self.focus == Pane::Recent
            && pane != Pane::Recent
            && self.selected_row(Pane::Recent) == 0
        {
            self.selection.recent = None;
        }
        if pane == Pane::Recent && self.selection.recent.is_none() {
            self.selection.recent = self.recent.front().map(key_of);
        }
        self.focus = pane;
    }

    /// The schedule under the selection, if the list is not empty.
    pub fn selected_schedule(&self) -> Option<&ScheduleRow> {
        self.schedules.get(self.selection.schedules)
    }

    /// How many rows (lines, for the log) a pane has.
    pub fn pane_len(&self, pane: Pane) -> usize {
        match pane {
            Pane::Running => self.running.len(),
            Pane::Recent => self.recent.len(),
            Pane::Stats => self.stats.rows().len(),
            Pane::Workers => self.workers.len(),
            Pane::Schedules => self.schedules.len(),
            Pane::Logs => self.logs.len(),
            Pane::Waiting => self.scheduled.len(),
            Pane::Limits => self.limits.len(),
        }
    }

    fn push_throughput(&mut self, completed: u64, failed: u64) {
        self.throughput.push_back(completed);
        self.failures.push_back(failed);
        while self.throughput.len() > THROUGHPUT_SECONDS {
            self.throughput.pop_front();
        }
        while self.failures.len() > THROUGHPUT_SECONDS {
            self.failures.pop_front();
        }
        let latest = self.throughput.iter().rev().take(RATE_SECONDS);
        let n = latest.len().max(1);
        self.rate = latest.sum::<u64>() as f64 / n as f64;
    }

    fn move_selection(&mut self, step: Move) {
        let len = self.pane_len(self.focus);
        let last = len.saturating_sub(1);
        let mut row = self.selected_row(self.focus);
        // The log counts back from its newest line, so "up" (older) means a larger number.
        let (slot, step) = match self.focus {
            Pane::Running | Pane::Recent => (&mut row, step),
            Pane::Stats => (&mut self.selection.stats, step),
            Pane::Workers => (&mut self.selection.workers, step),
            Pane::Schedules => (&mut self.selection.schedules, step),
            Pane::Logs => (&mut self.selection.log_back, step.reversed()),
            Pane::Waiting | Pane::Limits => return,
        };
        *slot = match step {
            Move::Back(n) => slot.saturating_sub(n),
            Move::Forward(n) => slot.saturating_add(n).min(last),
            Move::First => 0,
            Move::Last => last,
        };
        match self.focus {
            Pane::Running => self.selection.running = self.running.get(row).map(|t| t.id),
            Pane::Recent => self.selection.recent = self.recent.get(row).map(key_of),
            _ => {}
        }
    }

    fn clamp_selection(&mut self) {
        // A selected attempt that dropped off the recent list's end: the last row.
        if let Some(key) = &self.selection.recent
            && !self.recent.iter().any(|t| key_of(t) == *key)
        {
            self.selection.recent = self.recent.back().map(key_of);
        }
        let s = &mut self.selection;
        s.stats = s.stats.min(self.stats.rows().len().saturating_sub(1));
        s.workers = s.workers.min(self.workers.len().saturating_sub(1));
        s.schedules = s.schedules.min(self.schedules.len().saturating_sub(1));
        s.log_back = s.log_back.min(self.logs.len().saturating_sub(1));
    }
}

/// What the footer says when a selection key is pressed on a panel it does not act in.
fn where_it_works(action: Action) -> &'static str {
    match action {
        Action::RetrySelected => "r retries a discarded or cancelled task: select one in Recent",
        Action::CancelSelected => {
            "c cancels a task: select one in Running (or a retryable one in Recent)"
        }
        Action::TogglePauseSelected => "p pauses or resumes a schedule: select one in Schedules",
        _ => "x removes a schedule: select one in Schedules",
    }
}

/// How the recent list's selection names an attempt.
pub(crate) fn key_of(task: &FinishedTask) -> AttemptKey {
    AttemptKey {
        id: task.id,
        attempt: task.attempt,
    }
}

/// How flash messages name a schedule: `schedule 3 (send_digest)`, with the periodic
/// task's name if it has one, else the task's.
pub(crate) fn schedule_label(s: &ScheduleRow) -> String {
    format!(
        "schedule {} ({})",
        s.id,
        s.name.as_deref().unwrap_or(&s.task)
    )
}

#[derive(Debug, Clone, Copy)]
enum Move {
    Back(usize),
    Forward(usize),
    First,
    Last,
}

impl Move {
    fn reversed(self) -> Move {
        match self {
            Move::Back(n) => Move::Forward(n),
            Move::Forward(n) => Move::Back(n),
            Move::First => Move::Last,
            Move::Last => Move::First,
        }
    }
}

/// Whether an attempt that left its task in `state` counts as a failure in the
/// statistics: the attempt failed (`retryable`, `discarded`). A cancelled task was
/// stopped, not failed.
pub fn counts_as_failure(state: TaskState) -> bool {
    matches!(state, TaskState::Retryable | TaskState::Discarded)
}

/// The part of a task's id the dashboard shows: its last 8 hex digits. Task ids are
/// UUIDv7, whose leading digits are a timestamp shared by every id made in the same
/// minute or so; the trailing ones are random.
pub fn short_task_id(id: Uuid) -> String {
    format!("{:08x}", id.as_u128() & 0xffff_ffff)
}

/// [`short_task_id`] for a worker's id, which the database keeps as text (32 hex digits
/// when a castor worker wrote it): its last 8 hex digits, or the whole text if it does
/// not end in 8 of them.
pub fn short_id(id: &str) -> &str {
    match id.len().checked_sub(8) {
        Some(start)
            if id.is_char_boundary(start) && id[start..].chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            &id[start..]
        }
        _ => id,
    }
}

/// Keeps per-task-name counts and the latest [`STATS_SAMPLE`] durations, and turns them
/// into [`TaskStats`] rows. Recording is O(1), so it can keep up with a fast drain; the
/// mean and p95 are recomputed by [`StatsAccumulator::refresh`], for the names recorded
/// since the last refresh.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsAccumulator {
    tasks: BTreeMap<String, TaskSamples>,
    rows: Vec<TaskStats>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct TaskSamples {
    count: u64,
    failures: u64,
    latest: VecDeque<Duration>,
    /// Sum of `latest`, kept as it changes.
    sum: Duration,
    dirty: bool,
}

impl StatsAccumulator {
    /// Counts one finished attempt of `task`.
    pub fn record(&mut self, task: &str, duration: Duration, failed: bool) {
        let samples = match self.tasks.get_mut(task) {
            Some(samples) => samples,
            None => self.tasks.entry(task.to_owned()).or_default(),
        };
        samples.count += 1;
        samples.failures += u64::from(failed);
        samples.latest.push_back(duration);
        samples.sum = samples.sum.saturating_add(duration);
        if samples.latest.len() > STATS_SAMPLE
            && let Some(oldest) = samples.latest.pop_front()
        {
            samples.sum = samples.sum.saturating_sub(oldest);
        }
        samples.dirty = true;
    }

    /// Recomputes the rows of the names recorded since the last refresh.
    pub fn refresh(&mut self) {
        for (task, samples) in &mut self.tasks {
            if !samples.dirty {
                continue;
            }
            samples.dirty = false;
            let row = samples.to_row(task);
            match self.rows.binary_search_by(|r| r.task.as_str().cmp(task)) {
                Ok(i) => self.rows[i] = row,
                Err(i) => self.rows.insert(i, row),
            }
        }
    }

    /// One row per task name, sorted by name, as of the last refresh.
    pub fn rows(&self) -> &[TaskStats] {
        &self.rows
    }
}

impl TaskSamples {
    fn to_row(&self, task: &str) -> TaskStats {
        let n = self.latest.len();
        let mean = u32::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .map_or(Duration::ZERO, |n| self.sum / n);
        let mut sorted: Vec<Duration> = self.latest.iter().copied().collect();
        sorted.sort_unstable();
        // Nearest rank: the smallest value with at least p% of the sample at or below it.
        let percentile = |p: usize| -> Duration {
            let rank = (n * p).div_ceil(100).max(1);
            sorted.get(rank - 1).copied().unwrap_or_default()
        };
        let (p50, p95) = (percentile(50), percentile(95));
        TaskStats {
            task: task.to_owned(),
            count: self.count,
            failures: self.failures,
            mean,
            p50,
            p95,
        }
    }
}

/// [`clean`] text on one line: newlines become spaces. For names and other short fields.
fn one_line(text: &str) -> String {
    clean(text).replace('\n', " ")
}

/// Text from a task made safe to draw: terminal escape sequences and control characters
/// other than newlines go, tabs become four spaces, `\r\n` becomes `\n`.
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte in '@'..='~'.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC (a title or a hyperlink): up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            chars.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\n' => out.push('\n'),
            '\t' => out.push_str("    "),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DashboardState {
        DashboardState::new(Header {
            worker_id: "0190f1e2aa3b7c4d8e9f0a1b2c3d4e5f".into(),
            threads: 4,
            ..Header::default()
        })
    }

    /// A task id that is `name` if it is a UUID, else spells `name` (up to 16 bytes) in
    /// its last bytes, so that tests can name their tasks; [`name`] reads it back.
    fn id(name: &str) -> Uuid {
        name.parse().unwrap_or_else(|_| {
            let mut bytes = [0u8; 16];
            bytes[16 - name.len()..].copy_from_slice(name.as_bytes());
            Uuid::from_bytes(bytes)
        })
    }

    fn name(id: Uuid) -> String {
        let bytes = id.into_bytes();
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(16);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    fn running(name: &str) -> RunningTask {
        RunningTask {
            id: id(name),
            task: "resize".into(),
            mode: TaskMode::Thread,
            attempt: 1,
            max_attempts: 3,
            phase: Phase::Running,
            elapsed: Duration::ZERO,
            progress: None,
        }
    }

    fn finished(name: &str, state: TaskState, ms: u64) -> FinishedTask {
        FinishedTask {
            id: id(name),
            task: "resize".into(),
            state,
            attempt: 1,
            max_attempts: 3,
            duration: Duration::from_millis(ms),
            error: (state != TaskState::Completed).then(|| "boom".to_owned()),
            at: "12:00:00".into(),
        }
    }

    fn line(text: &str) -> LogLine {
        LogLine {
            at: "12:00:00".into(),
            level: Level::Info,
            source: Source::Worker,
            text: text.into(),
        }
    }

    #[test]
    fn counts_keep_the_eight_states_in_order_and_sum_per_state() {
        let mut s = state();
        s.set_counts([
            (TaskState::Completed, 5),
            (TaskState::Available, 2),
            (TaskState::Completed, 4),
        ]);
        let states: Vec<TaskState> = s.counts.iter().map(|(state, _)| *state).collect();
        assert_eq!(states, TaskState::ALL);
        assert_eq!(s.counts[2].1, 2);
        assert_eq!(s.counts[5].1, 9, "one row per task name, summed");
        s.set_counts([(TaskState::Running, 3)]);
        assert_eq!(s.counts[5].1, 0, "a state missing from the new list is 0");
        assert_eq!(s.counts[3].1, 3);
    }

    #[test]
    fn a_finished_task_moves_from_running_to_recent_and_stats() {
        let mut s = state();
        s.task_started(running("a"));
        s.task_started(running("b"));
        s.task_finished(finished("a", TaskState::Completed, 20));
        assert_eq!(s.running.len(), 1);
        assert_eq!(s.running[0].id, id("b"));
        assert_eq!(s.recent[0].id, id("a"));
        s.advance(Duration::from_millis(10));
        let rows = s.stats.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].count, rows[0].failures), (1, 0));
    }

    #[test]
    fn starting_a_listed_task_again_replaces_it() {
        let mut s = state();
        s.task_started(running("a"));
        s.task_started(RunningTask {
            attempt: 2,
            ..running("a")
        });
        assert_eq!(s.running.len(), 1);
        assert_eq!(s.running[0].attempt, 2);
    }

    #[test]
    fn progress_reaches_the_right_task_and_is_cleaned() {
        let mut s = state();
        s.task_started(running("a"));
        s.task_progress(
            id("a"),
            Progress {
                done: 3,
                total: 10,
                message: Some("\u{1b}[1mstep\u{1b}[0m\none".into()),
            },
        );
        s.task_progress(
            id("unknown"),
            Progress {
                done: 1,
                total: 1,
                message: None,
            },
        );
        let progress = s.running[0]
            .progress
            .as_ref()
            .map(|p| (p.done, p.message.clone()));
        assert_eq!(progress, Some((3, Some("step one".to_owned()))));
    }

    #[test]
    fn recent_is_bounded_and_keeps_a_selected_row_in_place() {
        let mut s = state();
        for i in 0..RECENT_CAPACITY + 5 {
            s.task_finished(finished(&format!("t{i}"), TaskState::Completed, 1));
        }
        assert_eq!(s.recent.len(), RECENT_CAPACITY);
        assert_eq!(s.selected_row(Pane::Recent), 0, "row 0 follows the newest");
        s.focus = Pane::Recent;
        s.apply(Action::Down);
        s.apply(Action::Down);
        let selected = s.selected_recent().map(|t| t.id);
        s.task_finished(finished("new", TaskState::Discarded, 1));
        assert_eq!(s.selected_recent().map(|t| t.id), selected);
        s.apply(Action::Bottom);
        s.task_finished(finished("newer", TaskState::Completed, 1));
        assert_eq!(
            s.selected_row(Pane::Recent),
            RECENT_CAPACITY - 1,
            "clamped at the end"
        );
    }

    fn claimed(id: &str) -> RunningTask {
        RunningTask {
            phase: Phase::Waiting,
            ..running(id)
        }
    }

    fn ids(s: &DashboardState) -> Vec<String> {
        s.running.iter().map(|t| name(t.id)).collect()
    }

    #[test]
    fn claimed_tasks_wait_apart_and_age_only_once_they_run() {
        let mut s = state();
        s.task_started(claimed("w1"));
        s.task_started(claimed("w2"));
        s.task_started(running("r1"));
        assert_eq!(ids(&s), ["r1", "w1", "w2"], "running first, then waiting");
        assert_eq!(s.running_count(), 1);
        s.advance(Duration::from_secs(5));
        assert_eq!(
            s.running[1].elapsed,
            Duration::ZERO,
            "waiting is not running"
        );
        s.task_running(id("w2"), Duration::from_millis(300));
        assert_eq!(ids(&s), ["r1", "w2", "w1"]);
        assert_eq!(
            (s.running[1].phase, s.running[1].elapsed),
            (Phase::Running, Duration::from_millis(300))
        );
        s.task_running(id("w2"), Duration::from_secs(9));
        assert_eq!(
            s.running[1].elapsed,
            Duration::from_millis(300),
            "a second start is ignored"
        );
        s.advance(Duration::from_secs(1));
        assert_eq!(s.running[1].elapsed, Duration::from_millis(1_300));
        assert_eq!(s.running_count(), 2);
    }

    #[test]
    fn the_running_selection_stays_on_its_task_as_rows_move() {
        let mut s = state();
        s.task_started(running("r1"));
        s.task_started(claimed("w1"));
        s.task_started(claimed("w2"));
        s.apply(Action::Bottom);
        assert_eq!(s.selected_running().map(|t| t.id), Some(id("w2")));
        // Rows arrive above it and move around it: the selection follows w2, not row 2.
        s.task_started(running("r2"));
        s.task_running(id("w1"), Duration::ZERO);
        assert_eq!(ids(&s), ["r1", "r2", "w1", "w2"]);
        assert_eq!(s.selected_running().map(|t| t.id), Some(id("w2")));
        assert_eq!(s.selected_row(Pane::Running), 3);
        s.task_running(id("w2"), Duration::ZERO);
        assert_eq!(s.selected_running().map(|t| t.id), Some(id("w2")));
        // The selected task ends: the row that takes its place is selected.
        s.apply(Action::Up);
        assert_eq!(s.selected_running().map(|t| t.id), Some(id("w1")));
        s.task_finished(finished("w1", TaskState::Completed, 1));
        assert_eq!(s.selected_running().map(|t| t.id), Some(id("w2")));
    }

    #[test]
    fn the_focused_recent_selection_does_not_follow_new_rows() {
        let mut s = state();
        s.task_finished(finished("a", TaskState::Discarded, 1));
        assert_eq!(s.selection.recent, None, "unfocused row 0 follows");
        s.task_finished(finished("b", TaskState::Completed, 1));
        assert_eq!(s.selected_recent().map(|t| t.id), Some(id("b")));
        // Focusing pins the row on screen: `r` retries what the user saw.
        s.apply(Action::PrevPane);
        s.apply(Action::PrevPane);
        s.apply(Action::PrevPane);
        s.apply(Action::PrevPane);
        s.apply(Action::PrevPane);
        assert_eq!(s.focus, Pane::Recent);
        s.apply(Action::Down);
        assert_eq!(s.selected_recent().map(|t| t.id), Some(id("a")));
        s.task_finished(finished("c", TaskState::Completed, 1));
        assert_eq!(
            s.apply(Action::RetrySelected),
            Some(Command::Retry { id: id("a") })
        );
        s.apply(Action::Top);
        s.task_finished(finished("d", TaskState::Completed, 1));
        assert_eq!(
            s.selected_recent().map(|t| t.id),
            Some(id("c")),
            "focused row 0 stays put"
        );
        // Leaving the pane on its newest row lets it follow again; elsewhere, not.
        s.apply(Action::NextPane);
        s.task_finished(finished("e", TaskState::Completed, 1));
        assert_eq!(s.selected_recent().map(|t| t.id), Some(id("c")));
        s.apply(Action::PrevPane);
        s.apply(Action::Top);
        s.apply(Action::NextPane);
        s.task_finished(finished("f", TaskState::Completed, 1));
        assert_eq!(s.selected_recent().map(|t| t.id), Some(id("f")));
        s.apply(Action::PrevPane);
        s.task_finished(finished("g", TaskState::Completed, 1));
        assert_eq!(s.selected_recent().map(|t| t.id), Some(id("f")));
        // The same task's attempts are told apart.
        s.task_finished(FinishedTask {
            attempt: 2,
            ..finished("f", TaskState::Completed, 1)
        });
        assert_eq!(s.selected_recent().map(|t| t.attempt), Some(1));
    }

    #[test]
    fn cancelling_a_running_task_asks_first() {
        let mut s = state();
        s.task_started(running("0190f1e2-aa3b-7c4d-8e9f-0a1b2c3d4e5f"));
        s.task_started(claimed("0190f1e2-aa3b-7c4d-8e9f-00000000beef"));
        assert_eq!(s.apply(Action::CancelSelected), None);
        assert_eq!(flash_text(&s), "cancel resize 2c3d4e5f (running)? y/n");
        assert_eq!(s.apply(Action::Decline), None);
        assert!(s.flash.is_none(), "n clears the question");
        assert_eq!(s.apply(Action::Confirm), None, "nothing to confirm");

        // Any other key calls it off; so does the question's going.
        s.apply(Action::CancelSelected);
        s.apply(Action::Down);
        assert!(s.flash.is_none());
        assert_eq!(s.apply(Action::Confirm), None);
        s.apply(Action::CancelSelected);
        assert_eq!(
            flash_text(&s),
            "cancel resize 0000beef (claimed and waiting for a slot)? y/n"
        );
        s.advance(FLASH_FOR);
        assert_eq!(s.apply(Action::Confirm), None, "too late");

        // `y` cancels the task the question named, wherever the selection went since.
        s.apply(Action::CancelSelected);
        s.task_started(running("0190f1e2-aa3b-7c4d-8e9f-00000000cafe"));
        s.task_finished(finished(
            "0190f1e2-aa3b-7c4d-8e9f-00000000beef",
            TaskState::Completed,
            1,
        ));
        assert_eq!(
            s.apply(Action::Confirm),
            Some(Command::Cancel {
                id: id("0190f1e2-aa3b-7c4d-8e9f-00000000beef")
            })
        );
        assert_eq!(flash_text(&s), "cancel requested for 0000beef");
    }

    #[test]
    fn removing_a_running_task_above_the_selection_keeps_it() {
        let mut s = state();
        for id in ["a", "b", "c"] {
            s.task_started(running(id));
        }
        s.apply(Action::Bottom);
        s.task_finished(finished("a", TaskState::Completed, 1));
        assert_eq!(s.selected_running().map(|t| t.id), Some(id("c")));
        s.task_finished(finished("c", TaskState::Completed, 1));
        assert_eq!(s.selected_running().map(|t| t.id), Some(id("b")));
    }

    #[test]
    fn logs_split_lines_drop_escapes_and_stay_bounded() {
        let mut s = state();
        s.log(LogLine {
            level: Level::Error,
            ..line("thread 'x' panicked at src/lib.rs:3:5:\r\n\u{1b}[31mboom\u{1b}[0m\tnow\u{7}\n")
        });
        let texts: Vec<&str> = s.logs.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            ["thread 'x' panicked at src/lib.rs:3:5:", "boom    now"]
        );
        assert!(s.logs.iter().all(|l| l.level == Level::Error));
        s.log(line(""));
        assert_eq!(s.logs.len(), 3, "an empty message is still a line");
        s.log(line("\u{1b}]0;title\u{7}after"));
        assert_eq!(s.logs[3].text, "after");
        for i in 0..LOG_CAPACITY {
            s.log(line(&i.to_string()));
        }
        assert_eq!(s.logs.len(), LOG_CAPACITY);
        assert_eq!(s.logs[0].text, "0");
    }

    #[test]
    fn scrolled_back_log_stays_on_its_lines() {
        let mut s = state();
        for i in 0..20 {
            s.log(line(&i.to_string()));
        }
        s.focus = Pane::Logs;
        s.apply(Action::Up);
        s.apply(Action::Up);
        assert_eq!(s.selection.log_back, 2);
        s.log(line("a\nb"));
        assert_eq!(s.selection.log_back, 4, "still on line 17");
        s.apply(Action::Bottom);
        assert_eq!(s.selection.log_back, 0);
        s.log(line("c"));
        assert_eq!(s.selection.log_back, 0, "following");
        s.apply(Action::Top);
        assert_eq!(s.selection.log_back, s.logs.len() - 1);
        s.apply(Action::PageDown);
        assert_eq!(s.selection.log_back, s.logs.len() - 1 - PAGE);
    }

    #[test]
    fn selection_moves_within_bounds() {
        let mut s = state();
        s.apply(Action::Down);
        assert_eq!(s.selected_row(Pane::Running), 0, "an empty pane stays at 0");
        for i in 0..15 {
            s.task_started(running(&i.to_string()));
        }
        s.apply(Action::PageDown);
        assert_eq!(s.selected_row(Pane::Running), PAGE);
        s.apply(Action::PageDown);
        assert_eq!(s.selected_row(Pane::Running), 14);
        s.apply(Action::Up);
        assert_eq!(s.selected_row(Pane::Running), 13);
        s.apply(Action::Top);
        assert_eq!(s.selected_row(Pane::Running), 0);
        s.apply(Action::Up);
        assert_eq!(s.selected_row(Pane::Running), 0);
    }

    #[test]
    fn panes_cycle_both_ways() {
        let mut s = state();
        let mut seen = vec![s.focus];
        for _ in 0..Pane::ALL.len() {
            s.apply(Action::NextPane);
            seen.push(s.focus);
        }
        assert_eq!(seen[..Pane::ALL.len()], Pane::ALL);
        assert_eq!(seen[Pane::ALL.len()], Pane::Running);
        s.apply(Action::PrevPane);
        assert_eq!(s.focus, Pane::Logs);
    }

    #[test]
    fn quit_and_help() {
        let mut s = state();
        assert_eq!(s.apply(Action::Quit), Some(Command::Quit));
        assert_eq!(s.apply(Action::ToggleHelp), None);
        assert!(s.show_help);
        s.apply(Action::ToggleHelp);
        assert!(!s.show_help);
    }

    #[test]
    fn retry_applies_to_discarded_and_cancelled_recent_tasks() {
        let mut s = state();
        s.task_finished(finished(
            "0190f1e2-aa3b-7c4d-8e9f-0a1b2c3d4e5f",
            TaskState::Discarded,
            5,
        ));
        assert_eq!(s.apply(Action::RetrySelected), None, "focus is on Running");
        assert!(s.flash.as_ref().is_some_and(|f| f.level == Level::Warn));
        s.focus = Pane::Recent;
        assert_eq!(
            s.apply(Action::RetrySelected),
            Some(Command::Retry {
                id: id("0190f1e2-aa3b-7c4d-8e9f-0a1b2c3d4e5f")
            })
        );
        let flash = s.flash.as_ref().map(|f| f.text.as_str());
        assert_eq!(flash, Some("retry requested for resize 2c3d4e5f"));
        // A new row does not slide under the focused selection; moving to it does.
        s.task_finished(finished("c", TaskState::Completed, 5));
        assert_eq!(
            s.selected_recent().map(|t| t.state.as_str()),
            Some("discarded")
        );
        s.apply(Action::Top);
        assert_eq!(s.apply(Action::RetrySelected), None);
        let flash = s
            .flash
            .as_ref()
            .map(|f| f.text.as_str())
            .unwrap_or_default();
        assert!(flash.contains("is completed"), "{flash}");
    }

    #[test]
    fn cancel_applies_to_running_and_retryable_tasks() {
        let mut s = state();
        assert_eq!(s.apply(Action::CancelSelected), None, "nothing running");
        s.task_started(running("r"));
        assert_eq!(s.apply(Action::CancelSelected), None, "asks first");
        assert_eq!(
            s.apply(Action::Confirm),
            Some(Command::Cancel { id: id("r") })
        );
        s.focus = Pane::Recent;
        s.task_finished(finished("r", TaskState::Retryable, 5));
        assert_eq!(
            s.apply(Action::CancelSelected),
            Some(Command::Cancel { id: id("r") }),
            "a retryable task is not running: no question"
        );
        s.task_finished(finished("d", TaskState::Discarded, 5));
        s.apply(Action::Top);
        assert_eq!(s.apply(Action::CancelSelected), None);
        s.focus = Pane::Logs;
        assert_eq!(s.apply(Action::CancelSelected), None);
    }

    #[test]
    fn advance_ages_everything_and_expires_the_flash() {
        let mut s = state();
        s.task_started(running("a"));
        s.set_workers(vec![WorkerInfo {
            id: "w".into(),
            hostname: "h".into(),
            pid: 1,
            manager: "m".into(),
            last_heartbeat_ago: Duration::from_secs(1),
            alive: true,
            completed: 0,
            failed: 0,
        }]);
        s.flash(Level::Info, "hello");
        s.advance(Duration::from_secs(2));
        assert_eq!(s.header.uptime, Duration::from_secs(2));
        assert_eq!(s.running[0].elapsed, Duration::from_secs(2));
        assert_eq!(s.workers[0].last_heartbeat_ago, Duration::from_secs(3));
        assert!(s.flash.is_some());
        s.advance(FLASH_FOR);
        assert!(s.flash.is_none());
    }

    #[test]
    fn throughput_takes_one_sample_per_second() {
        let mut s = state();
        for i in 0..6 {
            s.task_finished(finished(&i.to_string(), TaskState::Completed, 1));
        }
        s.task_finished(finished("x", TaskState::Discarded, 1));
        s.advance(Duration::from_millis(600));
        assert!(s.throughput.is_empty());
        s.advance(Duration::from_millis(600));
        assert_eq!(s.throughput, [6]);
        assert_eq!(s.failures, [1]);
        s.advance(Duration::from_millis(1900));
        assert_eq!(s.throughput, [6, 0, 0]);
        assert_eq!(s.failures, [1, 0, 0]);
        assert!((s.rate - 2.0).abs() < 1e-9, "{}", s.rate);
        s.advance(Duration::from_secs(10_000));
        assert_eq!(s.throughput.len(), THROUGHPUT_SECONDS);
        assert_eq!(s.rate, 0.0);
    }

    #[test]
    fn stats_mean_and_p95_over_a_bounded_sample() {
        let mut acc = StatsAccumulator::default();
        for ms in 1..=100 {
            acc.record("a", Duration::from_millis(ms), ms % 10 == 0);
        }
        acc.record("b", Duration::from_secs(2), true);
        assert!(acc.rows().is_empty(), "rows change on refresh only");
        acc.refresh();
        let a = &acc.rows()[0];
        assert_eq!((a.task.as_str(), a.count, a.failures), ("a", 100, 10));
        assert_eq!(a.mean, Duration::from_micros(50_500));
        assert_eq!(a.p50, Duration::from_millis(50));
        assert_eq!(a.p95, Duration::from_millis(95));
        let b = &acc.rows()[1];
        assert_eq!(
            (b.mean, b.p95),
            (Duration::from_secs(2), Duration::from_secs(2))
        );

        for _ in 0..STATS_SAMPLE {
            acc.record("a", Duration::from_millis(7), false);
        }
        acc.refresh();
        let a = &acc.rows()[0];
        assert_eq!(a.count, 100 + STATS_SAMPLE as u64, "counts are not sampled");
        assert_eq!(
            (a.mean, a.p95),
            (Duration::from_millis(7), Duration::from_millis(7))
        );
    }

    fn schedule(id: i64, next_in_ms: Option<u64>, paused: bool) -> ScheduleRow {
        ScheduleRow {
            id,
            task: "send_digest".into(),
            name: None,
            cadence: "every 1h 0m".into(),
            runs: 2,
            times: Some(5),
            next_run_in: next_in_ms.map(Duration::from_millis),
            paused,
        }
    }

    fn waiting(name: &str, ms: u64) -> ScheduledTask {
        ScheduledTask {
            after: None,
            id: id(name),
            task: "resize".into(),
            runs_in: Duration::from_millis(ms),
        }
    }

    fn flash_text(s: &DashboardState) -> &str {
        s.flash
            .as_ref()
            .map(|f| f.text.as_str())
            .unwrap_or_default()
    }

    #[test]
    fn schedules_are_cleaned_and_keep_the_selected_one() {
        let mut s = state();
        s.set_schedules(vec![
            schedule(1, Some(10), false),
            schedule(2, Some(20), false),
            ScheduleRow {
                name: Some("nightly\u{1b}[1m\nrun".into()),
                ..schedule(3, None, false)
            },
        ]);
        assert_eq!(s.schedules[2].name.as_deref(), Some("nightly run"));
        s.focus = Pane::Schedules;
        s.apply(Action::Bottom);
        assert_eq!(s.selected_schedule().map(|r| r.id), Some(3));
        // Schedule 1 went; the selection follows schedule 3 up a row.
        s.set_schedules(vec![schedule(2, Some(20), false), schedule(3, None, false)]);
        assert_eq!(s.selection.schedules, 1);
        assert_eq!(s.selected_schedule().map(|r| r.id), Some(3));
        // Schedule 3 went too: the selection is clamped to what is left.
        s.set_schedules(vec![schedule(2, Some(20), false)]);
        assert_eq!(s.selected_schedule().map(|r| r.id), Some(2));
        s.set_schedules(Vec::new());
        assert_eq!(s.selection.schedules, 0);
        assert_eq!(
            s.apply(Action::TogglePauseSelected),
            None,
            "nothing selected"
        );
    }

    #[test]
    fn a_task_waiting_on_its_parents_shows_the_first_not_completed() {
        let parent = |task: &str, state: Option<TaskState>| castor_store::ParentInfo {
            position: 0,
            id: Uuid::from_u128(1),
            task: task.into(),
            state,
        };
        let done = Some(TaskState::Completed);
        let after = |parents: &[castor_store::ParentInfo]| ScheduledTask::after_parents(parents);
        assert_eq!(
            after(&[parent("a", done), parent("b", Some(TaskState::Running))]),
            "b"
        );
        assert_eq!(
            after(&[
                parent("a", Some(TaskState::Available)),
                parent("b", done),
                parent("c", Some(TaskState::Waiting)),
                parent("d", None),
            ]),
            "a +2"
        );
        assert_eq!(after(&[parent("a", done)]), "its parents");
        // Sorted after every task with a start time.
        let mut s = state();
        s.set_scheduled(vec![
            ScheduledTask {
                after: Some("a".into()),
                id: Uuid::from_u128(2),
                task: "chained".into(),
                runs_in: Duration::ZERO,
            },
            ScheduledTask {
                after: None,
                id: Uuid::from_u128(3),
                task: "timed".into(),
                runs_in: Duration::from_secs(60),
            },
        ]);
        let order: Vec<&str> = s.scheduled.iter().map(|t| t.task.as_str()).collect();
        assert_eq!(order, ["timed", "chained"]);
    }

    #[test]
    fn scheduled_tasks_are_sorted_and_bounded() {
        let mut s = state();
        let mut tasks: Vec<ScheduledTask> = (0..SCHEDULED_CAPACITY as u64 + 10)
            .rev()
            .map(|i| waiting(&i.to_string(), i * 100))
            .collect();
        tasks[0].task = "re\tsize\n".into();
        s.set_scheduled(tasks);
        assert_eq!(s.scheduled.len(), SCHEDULED_CAPACITY);
        assert_eq!(s.scheduled[0].id, id("0"), "soonest first");
        assert_eq!(
            s.scheduled.last().map(|t| name(t.id)),
            Some((SCHEDULED_CAPACITY - 1).to_string()),
            "the latest are dropped"
        );
        s.set_scheduled(vec![
            waiting("x", 5),
            ScheduledTask {
                after: None,
                task: "re\tsize\n".into(),
                ..waiting("y", 1)
            },
        ]);
        assert_eq!(s.scheduled[0].task, "re    size ");
    }

    #[test]
    fn schedules_and_waiting_tasks_count_down_to_zero() {
        let mut s = state();
        s.set_schedules(vec![
            schedule(1, Some(4_200), false),
            schedule(2, None, false),
            schedule(3, Some(500), true),
        ]);
        s.set_scheduled(vec![waiting("a", 200), waiting("b", 3_000)]);
        s.advance(Duration::from_secs(1));
        let next: Vec<Option<Duration>> = s.schedules.iter().map(|r| r.next_run_in).collect();
        assert_eq!(
            next,
            [
                Some(Duration::from_millis(3_200)),
                None,
                Some(Duration::ZERO)
            ]
        );
        let starts: Vec<Duration> = s.scheduled.iter().map(|t| t.runs_in).collect();
        assert_eq!(starts, [Duration::ZERO, Duration::from_secs(2)]);
    }

    #[test]
    fn p_pauses_and_resumes_the_selected_schedule() {
        let mut s = state();
        s.set_schedules(vec![
            schedule(7, Some(1_000), false),
            schedule(8, Some(1_000), true),
            ScheduleRow {
                name: Some("weekly".into()),
                ..schedule(9, None, false)
            },
        ]);
        assert_eq!(
            s.apply(Action::TogglePauseSelected),
            None,
            "focus is on Running"
        );
        assert!(flash_text(&s).contains("select one in Schedules"));
        s.focus = Pane::Schedules;
        assert_eq!(
            s.apply(Action::TogglePauseSelected),
            Some(Command::PauseSchedule { id: 7 })
        );
        assert_eq!(
            flash_text(&s),
            "pause requested for schedule 7 (send_digest)"
        );
        s.apply(Action::Down);
        assert_eq!(
            s.apply(Action::TogglePauseSelected),
            Some(Command::ResumeSchedule { id: 8 })
        );
        s.apply(Action::Down);
        assert_eq!(s.apply(Action::TogglePauseSelected), None);
        assert_eq!(
            flash_text(&s),
            "schedule 9 (weekly) is finished: nothing to pause (x removes it)"
        );
        assert_eq!(s.flash.as_ref().map(|f| f.level), Some(Level::Warn));
    }

    #[test]
    fn x_removes_a_schedule_only_when_pressed_twice_in_a_row() {
        let mut s = state();
        s.set_schedules(vec![schedule(1, Some(10), false), schedule(2, None, false)]);
        assert_eq!(s.apply(Action::RemoveSelected), None, "focus is on Running");
        assert!(flash_text(&s).contains("select one in Schedules"));
        assert_eq!(s.apply(Action::RemoveSelected), None, "and still is");

        s.focus = Pane::Schedules;
        assert_eq!(s.apply(Action::RemoveSelected), None);
        assert_eq!(
            flash_text(&s),
            "press x again to remove schedule 1 (send_digest)"
        );
        assert_eq!(
            s.apply(Action::RemoveSelected),
            Some(Command::RemoveSchedule { id: 1 })
        );
        assert_eq!(
            flash_text(&s),
            "removal requested for schedule 1 (send_digest)"
        );
        assert_eq!(
            s.apply(Action::RemoveSelected),
            None,
            "a third x starts over"
        );

        // Any other key in between calls the removal off, and clears its prompt.
        s.apply(Action::Down);
        assert!(s.flash.is_none());
        assert_eq!(s.apply(Action::RemoveSelected), None);
        s.apply(Action::Up);
        s.apply(Action::Down);
        assert_eq!(s.apply(Action::RemoveSelected), None);
        s.apply(Action::ToggleHelp);
        s.apply(Action::ToggleHelp);
        assert_eq!(s.apply(Action::RemoveSelected), None);

        // So does the prompt's going: expiring, or replaced by another message.
        s.advance(FLASH_FOR);
        assert_eq!(s.apply(Action::RemoveSelected), None, "too late");
        s.flash(Level::Info, "resumed schedule 1");
        assert_eq!(s.apply(Action::RemoveSelected), None, "prompt replaced");
        s.advance(FLASH_FOR - Duration::from_millis(1));
        assert_eq!(
            s.apply(Action::RemoveSelected),
            Some(Command::RemoveSchedule { id: 2 }),
            "just in time"
        );
    }

    #[test]
    fn a_second_x_removes_nothing_if_the_selected_schedule_changed() {
        let mut s = state();
        s.focus = Pane::Schedules;
        s.set_schedules(vec![
            schedule(1, Some(10), false),
            schedule(2, Some(10), false),
        ]);
        s.apply(Action::Bottom);
        assert_eq!(s.apply(Action::RemoveSelected), None);
        // Schedule 2 was removed elsewhere (by the CLI) before the second x: the selection
        // falls on schedule 1, which the first x did not name.
        s.set_schedules(vec![schedule(1, Some(10), false)]);
        assert_eq!(s.apply(Action::RemoveSelected), None);
        assert_eq!(
            flash_text(&s),
            "press x again to remove schedule 1 (send_digest)"
        );
        assert_eq!(
            s.apply(Action::RemoveSelected),
            Some(Command::RemoveSchedule { id: 1 })
        );
    }

    #[test]
    fn failures_are_failed_attempts() {
        let failures: Vec<TaskState> = TaskState::ALL
            .into_iter()
            .filter(|&s| counts_as_failure(s))
            .collect();
        assert_eq!(failures, [TaskState::Retryable, TaskState::Discarded]);
    }

    #[test]
    fn short_ids_are_the_random_end() {
        assert_eq!(
            short_task_id(id("0190f1e2-aa3b-7c4d-8e9f-0a1b2c3d4e5f")),
            "2c3d4e5f"
        );
        assert_eq!(short_task_id(Uuid::nil()), "00000000");
        assert_eq!(short_id("0190f1e2-aa3b-7c4d-8e9f-0a1b2c3d4e5f"), "2c3d4e5f");
        assert_eq!(short_id("0190f1e2aa3b7c4d8e9f0a1b2c3d4e5f"), "2c3d4e5f");
        assert_eq!(short_id("worker-1"), "worker-1");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id("not an id at all"), "not an id at all");
        assert_eq!(short_id(""), "");
    }
}
