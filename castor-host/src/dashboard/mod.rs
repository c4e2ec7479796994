//! The interactive dashboard of `castor -i`: the same worker, with a live full-screen view
//! instead of log lines.
//!
//! Three parts that know nothing of each other's insides:
//! - `state`: [`DashboardState`], plain data updated from the worker's events and the
//!   database, and [`DashboardState::apply`], which turns an [`Action`](input::Action) into UI changes or
//!   a [`Command`];
//! - `view`: [`render`] draws a `&DashboardState`, with no clock, I/O or mutation;
//! - `input`: [`action_for`] maps a key to an [`Action`].
//!
//! This file owns the terminal and the loop: the worker runs on its own thread and
//! reports through a channel; the loop applies its events and keys, refreshes counts
//! from the database when it changed (at a rate bounded by what the query costs), and
//! redraws at most ten times a second. The worker's stdout and stderr (where a thread
//! task's prints and a panic message go) are moved into a pipe that feeds the log pane,
//! so nothing scribbles over the screen. The terminal is restored on quit, on error, on
//! a panic and on SIGTERM.

pub mod input;
pub mod layout;
pub mod panels;
pub mod state;
pub mod view;
pub mod widgets;

#[cfg(test)]
mod view_tests;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use castor_abi::{TaskMode, Uuid};
use castor_store::TaskState;
use castor_store::format::format_duration;
use castor_store::{Database, OpenOptions, Signatures, Store, duration_us, now_us};

use crate::commands::Verdict;
use crossbeam_channel::{Receiver, Sender};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event};
use ratatui::crossterm::{cursor, execute, terminal};

pub use input::action_for;
pub use state::{
    Command, DashboardState, FinishedTask, Header, Level, LogLine, Phase, Progress, RunningTask,
    ScheduleRow, ScheduledTask, Source, WorkerInfo,
};
pub use view::render;

use crate::worker::{
    AttemptStart, Controller, Reporter, Summary, Worker, WorkerEvent, clock_in_line, clock_skewed,
    timestamp, write_failing, write_recovered,
};

/// The fastest the screen is redrawn.
const FRAME: Duration = Duration::from_millis(100);

/// How long the loop waits for a key before looking at the worker's events.
const TICK: Duration = Duration::from_millis(100);

/// How often the list of workers is reread.
const WORKERS_EVERY: Duration = Duration::from_secs(2);

/// A worker whose heartbeat is older than this is shown as not alive.
const ALIVE_WITHIN: Duration = Duration::from_secs(60);

/// What the worker's thread tells the screen.
enum UiEvent {
    /// A claim, and what says when it begins running.
    Started(RunningTask, AttemptStart),
    Finished(FinishedTask),
    Log(LogLine),
    Progress(Uuid, Progress),
    Stopping(String),
    Exited(Result<Summary, String>),
}

/// Runs `worker` under the dashboard until it stops; returns its summary.
///
/// # Errors
/// The terminal cannot be set up, or the worker stopped on an error.
pub fn run(
    worker: Worker,
    header: Header,
    database: &Database,
    controller: Controller,
) -> anyhow::Result<Summary> {
    let store = castor_store::open(database, &OpenOptions::app())?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let screen = Screen::open(tx.clone()).context("cannot set up the terminal")?;
    let worker_thread = std::thread::Builder::new()
        .name("castor-worker".into())
        .spawn(move || {
            let mut reporter = ChannelReporter { events: tx.clone() };
            let result = worker.run(&mut reporter).map_err(|e| format!("{e:#}"));
            let _ = tx.send(UiEvent::Exited(result));
        })
        .context("cannot start the worker thread")?;
    let outcome = event_loop(screen, header, &rx, store, &controller);
    let _ = worker_thread.join();
    outcome
}

fn event_loop(
    mut screen: Screen,
    header: Header,
    events: &Receiver<UiEvent>,
    store: Store,
    controller: &Controller,
) -> anyhow::Result<Summary> {
    let mut state = DashboardState::new(header);
    let mut refresher = Refresher::new(store, state.header.manager.clone());
    // Claimed attempts still waiting for a slot, by id: watched until they begin.
    let mut waiting: HashMap<Uuid, AttemptStart> = HashMap::new();
    let mut last_tick = Instant::now();
    let mut last_draw: Option<Instant> = None;
    let mut dirty = true;
    let exit = loop {
        if event::poll(TICK)? {
            match event::read()? {
                Event::Key(key) => {
                    if let Some(action) = action_for(key, &state) {
                        if let Some(command) = state.apply(action) {
                            let mut refresh_now = false;
                            carry_out(
                                command,
                                &mut state,
                                &mut refresher.store,
                                controller,
                                &mut refresh_now,
                            );
                            if refresh_now {
                                refresher.next_workers = Instant::now();
                            }
                        }
                        dirty = true;
                    }
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
        let mut exited = None;
        for event in events.try_iter() {
            dirty = true;
            match event {
                UiEvent::Started(task, start) => {
                    waiting.insert(task.id, start);
                    state.task_started(task);
                }
                UiEvent::Finished(task) => {
                    waiting.remove(&task.id);
                    state.task_finished(task);
                }
                UiEvent::Log(line) => state.log(line),
                UiEvent::Progress(id, progress) => state.task_progress(id, progress),
                UiEvent::Stopping(text) => state.stopping = Some(text),
                UiEvent::Exited(result) => exited = Some(result),
            }
        }
        if let Some(result) = exited {
            break result;
        }
        dirty |= refresher.refresh(&mut state);
        let now = Instant::now();
        waiting.retain(|id, start| match start.started_at() {
            Some(at) => {
                state.task_running(*id, now.saturating_duration_since(at));
                dirty = true;
                false
            }
            None => true,
        });
        let (threads, processes) = busy(&state);
        state.set_pool_busy(threads, processes);
        let now = Instant::now();
        state.advance(now - last_tick);
        last_tick = now;
        // Redraw on change (at most every frame), and every second for the clocks.
        let since = last_draw.map_or(Duration::MAX, |t| now - t);
        if (dirty && since >= FRAME) || since >= Duration::from_secs(1) {
            screen.draw(&state)?;
            last_draw = Some(now);
            dirty = false;
        }
    };
    drop(screen);
    exit.map_err(anyhow::Error::msg)
}

/// Busy thread and process slots: the attempts running, not those waiting for a slot.
fn busy(state: &DashboardState) -> (usize, usize) {
    let running = state.running.iter().filter(|t| t.phase == Phase::Running);
    let threads = running
        .clone()
        .filter(|t| t.mode == TaskMode::Thread)
        .count();
    let processes = running.count() - threads;
    (
        threads.min(state.header.threads),
        processes.min(state.header.processes),
    )
}

/// Does what a key asked for outside the view.
fn carry_out(
    command: Command,
    state: &mut DashboardState,
    store: &mut Store,
    controller: &Controller,
    refresh_now: &mut bool,
) {
    match command {
        Command::Quit => {
            controller.shutdown();
            if state.stopping.is_none() {
                state.stopping =
                    Some("stopping: waiting for running tasks; q again stops now".into());
            }
        }
        Command::Retry { id } => match crate::commands::retry_task(store, id) {
            Ok(acted) => say(state, acted.verdict),
            Err(e) => state.flash(Level::Error, format!("retry failed: {e}")),
        },
        Command::PauseSchedule { id } | Command::ResumeSchedule { id } => {
            let paused = matches!(command, Command::PauseSchedule { .. });
            let done = if paused { "paused" } else { "resumed" };
            match store.write(|tx| tx.set_schedule_paused(id, paused)) {
                Ok(true) => state.flash(Level::Info, format!("{done} schedule {id}")),
                Ok(false) => state.flash(Level::Warn, format!("no schedule {id}")),
                Err(e) => state.flash(Level::Error, format!("failed: {e}")),
            }
            *refresh_now = true;
        }
        Command::RemoveSchedule { id } => {
            match store.write(|tx| tx.remove_schedule(id)) {
                Ok(true) => state.flash(Level::Info, format!("removed schedule {id}")),
                Ok(false) => state.flash(Level::Warn, format!("no schedule {id}")),
                Err(e) => state.flash(Level::Error, format!("remove failed: {e}")),
            }
            *refresh_now = true;
        }
        Command::Cancel { id } => match crate::commands::cancel_task(store, id) {
            Ok(acted) => say(state, acted.verdict),
            Err(e) => state.flash(Level::Error, format!("cancel failed: {e}")),
        },
    }
}

/// Shows what `castor retry`/`castor cancel` would have printed, in the footer.
fn say(state: &mut DashboardState, verdict: Verdict) {
    match verdict {
        Verdict::Done(text) => state.flash(Level::Info, text),
        Verdict::Refused(text) => state.flash(Level::Warn, text),
    }
}

/// Rereads counts and workers from the database, no more often than it is worth.
struct Refresher {
    store: Store,
    manager: String,
    data_version: Option<i64>,
    next_counts: Instant,
    /// Workers, schedules and waiting tasks are reread together.
    next_workers: Instant,
}

impl Refresher {
    fn new(store: Store, manager: String) -> Refresher {
        Refresher {
            store,
            manager,
            data_version: None,
            next_counts: Instant::now(),
            next_workers: Instant::now(),
        }
    }

    /// True if the state changed.
    fn refresh(&mut self, state: &mut DashboardState) -> bool {
        let now = Instant::now();
        let mut changed = false;
        if now >= self.next_counts {
            let version = self.store.change_counter().ok().flatten();
            if version.is_none() || version != self.data_version {
                self.data_version = version;
                let started = Instant::now();
                if let Ok(counts) = self.store.counts() {
                    state.set_counts(counts.into_iter().map(|c| (c.state, c.count)));
                    changed = true;
                }
                // A full count costs more on a big table: read it less often then, so the
                // dashboard never takes more than about 5% of a core for it.
                let cost = started.elapsed();
                self.next_counts = now + (cost * 20).max(Duration::from_secs(1));
            } else {
                self.next_counts = now + Duration::from_millis(250);
            }
        }
        if now >= self.next_workers {
            if let Ok(workers) = self.store.workers(true) {
                let now_us = now_us();
                // Tasks no live worker runs for want of their signature (type fingerprint).
                let live: Vec<_> = workers
                    .iter()
                    .filter(|w| now_us - w.heartbeat_at < duration_us(ALIVE_WITHIN))
                    .cloned()
                    .collect();
                if let Ok(waiting) = self
                    .store
                    .waiting_for_signature(&Signatures::of_workers(&live))
                {
                    state.set_waiting_for_signature(
                        waiting
                            .into_iter()
                            .filter(|w| w.manager == self.manager)
                            .map(|w| (w.task, w.count))
                            .collect(),
                    );
                }
                let infos = workers
                    .into_iter()
                    .map(|w| {
                        let ago = Duration::from_micros(
                            u64::try_from(now_us - w.heartbeat_at).unwrap_or(0),
                        );
                        WorkerInfo {
                            id: w.id,
                            hostname: w.hostname,
                            pid: w.pid,
                            manager: w.manager,
                            last_heartbeat_ago: ago,
                            alive: ago < ALIVE_WITHIN,
                            completed: u64::try_from(w.completed).unwrap_or(0),
                            failed: u64::try_from(w.failed).unwrap_or(0),
                        }
                    })
                    .collect();
                state.set_workers(infos);
                changed = true;
            }
            let now_us = now_us();
            let ahead = |at: i64| Duration::from_micros(u64::try_from(at - now_us).unwrap_or(0));
            if let Ok(schedules) = self.store.schedules(Some(&self.manager)) {
                state.set_schedules(
                    schedules
                        .into_iter()
                        .map(|s| ScheduleRow {
                            id: s.id,
                            task: s.task,
                            name: s.name,
                            cadence: s.cadence,
                            runs: s.runs,
                            times: s.times,
                            next_run_in: s.next_run_at.map(ahead),
                            paused: s.paused,
                        })
                        .collect(),
                );
                changed = true;
            }
            // One read of the limits table (nothing more without limits in force).
            if let Ok(limits) = self.store.limit_status(Some(&self.manager), now_us) {
                state.set_limits(
                    limits
                        .iter()
                        .map(|s| state::LimitLine {
                            task: s.row.task.clone(),
                            limits: crate::limits::in_force(&s.row),
                            running: s.running,
                            available: s.available,
                            held: s.held_task().map(|h| h.to_string()),
                        })
                        .collect(),
                );
            }
            if let Ok(oldest) = self.store.oldest_available(&self.manager) {
                let age = |at: i64| Duration::from_micros(u64::try_from(now_us - at).unwrap_or(0));
                state.set_oldest_available(oldest.map(age));
            }
            if let Ok(waiting) = self.store.waiting(&self.manager, state::SCHEDULED_CAPACITY) {
                let mut tasks: Vec<ScheduledTask> = waiting
                    .into_iter()
                    .map(|w| ScheduledTask {
                        id: w.id,
                        task: w.task,
                        runs_in: ahead(w.starts_at),
                        after: None,
                    })
                    .collect();
                // Then those waiting on their parents, if room is left.
                let room = state::SCHEDULED_CAPACITY.saturating_sub(tasks.len());
                if room > 0
                    && let Ok(chained) = self.store.waiting_on_parents(&self.manager, room)
                {
                    tasks.extend(chained.into_iter().map(|w| ScheduledTask {
                        after: Some(ScheduledTask::after_parents(&w.parents)),
                        id: w.id,
                        task: w.task,
                        runs_in: Duration::ZERO,
                    }));
                }
                state.set_scheduled(tasks);
            }
            self.next_workers = now + WORKERS_EVERY;
        }
        changed
    }
}

/// `HH:MM:SS` (UTC) of now.
fn clock() -> String {
    timestamp(now_us())
        .get(11..19)
        .unwrap_or_default()
        .to_owned()
}

fn worker_line(level: Level, text: String) -> LogLine {
    LogLine {
        at: clock(),
        level,
        source: Source::Worker,
        text,
    }
}

/// Turns the worker's events into the screen's, on the worker's thread.
struct ChannelReporter {
    events: Sender<UiEvent>,
}

impl ChannelReporter {
    fn send(&self, event: UiEvent) {
        let _ = self.events.send(event);
    }
}

impl Reporter for ChannelReporter {
    fn event(&mut self, event: WorkerEvent<'_>) {
        match event {
            WorkerEvent::Started {
                id,
                task,
                mode,
                attempt,
                max_attempts,
                start,
            } => self.send(UiEvent::Started(
                RunningTask {
                    id,
                    task: task.to_owned(),
                    mode,
                    attempt,
                    max_attempts,
                    phase: Phase::Waiting,
                    elapsed: Duration::ZERO,
                    progress: None,
                },
                start,
            )),
            WorkerEvent::Finished(f) => {
                let completed = f.state == TaskState::Completed;
                let error = (!completed).then(|| f.error.unwrap_or_default().to_owned());
                if !completed {
                    let level = match f.state {
                        TaskState::Retryable => Level::Warn,
                        _ => Level::Error,
                    };
                    self.send(UiEvent::Log(worker_line(level, crate::worker::describe(f))));
                }
                self.send(UiEvent::Finished(FinishedTask {
                    id: f.id,
                    task: f.task.to_owned(),
                    state: f.state,
                    attempt: f.attempt,
                    max_attempts: f.max_attempts,
                    duration: f.elapsed,
                    error,
                    at: clock(),
                }));
            }
            WorkerEvent::TaskLog {
                id,
                task,
                level,
                line,
            } => self.send(UiEvent::Log(LogLine {
                at: clock(),
                level: level.into(),
                source: Source::Task {
                    task: task.to_owned(),
                    id,
                },
                text: line.to_owned(),
            })),
            WorkerEvent::LibraryLog { level, line } => self.send(UiEvent::Log(LogLine {
                at: clock(),
                level: level.into(),
                source: Source::Library,
                text: line.to_owned(),
            })),
            WorkerEvent::Progress {
                id,
                done,
                total,
                message,
            } => self.send(UiEvent::Progress(
                id,
                Progress {
                    done,
                    total,
                    message: (!message.is_empty()).then(|| message.to_owned()),
                },
            )),
            WorkerEvent::Stopping { running, grace } => {
                let text = format!(
                    "stopping: waiting up to {} for {running} running task(s); q again stops now",
                    format_duration(grace)
                );
                self.send(UiEvent::Log(worker_line(Level::Warn, text.clone())));
                self.send(UiEvent::Stopping(text));
            }
            WorkerEvent::Reloading {
                build,
                running,
                grace,
            } => {
                let text = crate::worker::reloading(build, running, grace);
                self.send(UiEvent::Log(worker_line(Level::Info, text.clone())));
                self.send(UiEvent::Stopping(text));
            }
            WorkerEvent::Forced { running } => self.send(UiEvent::Log(worker_line(
                Level::Warn,
                format!("stopping now; giving up on {running} running task(s)"),
            ))),
            WorkerEvent::StopNotRecorded { error } => self.send(UiEvent::Log(worker_line(
                Level::Error,
                crate::worker::stop_not_recorded(error),
            ))),
            WorkerEvent::WriteFailing { error, retry_in } => self.send(UiEvent::Log(worker_line(
                Level::Error,
                write_failing(error, retry_in),
            ))),
            WorkerEvent::WriteRecovered { failed_for, tries } => self.send(UiEvent::Log(
                worker_line(Level::Info, write_recovered(failed_for, tries)),
            )),
            WorkerEvent::ClockSkewed { offset } => {
                self.send(UiEvent::Log(worker_line(Level::Warn, clock_skewed(offset))))
            }
            WorkerEvent::ClockInLine { offset } => self.send(UiEvent::Log(worker_line(
                Level::Info,
                clock_in_line(offset),
            ))),
            WorkerEvent::Abandoned { id, task } => self.send(UiEvent::Log(worker_line(
                Level::Warn,
                format!("abandoned {task} {id}: still running at shutdown; it will be retried"),
            ))),
            WorkerEvent::Buried { worker, why } => self.send(UiEvent::Log(worker_line(
                Level::Warn,
                format!("rescuing the tasks of worker {worker}: it {why}"),
            ))),
            WorkerEvent::Rescued { id, task, state } => self.send(UiEvent::Log(worker_line(
                Level::Warn,
                format!("{task} {id} rescued from a dead worker: now {state}"),
            ))),
            WorkerEvent::Mismatched {
                task,
                count,
                found,
                own,
            } => self.send(UiEvent::Log(worker_line(
                Level::Warn,
                crate::worker::mismatched_line(task, count, found, own),
            ))),
            WorkerEvent::Pruned { count } => self.send(UiEvent::Log(worker_line(
                Level::Info,
                format!("pruned {count} finished task(s) past the retention period"),
            ))),
            WorkerEvent::ChildOutput { pid, line } => self.send(UiEvent::Log(LogLine {
                at: clock(),
                level: Level::Output,
                source: Source::Child { pid },
                text: line.to_owned(),
            })),
            WorkerEvent::Stopped { summary } => self.send(UiEvent::Log(worker_line(
                Level::Info,
                format!(
                    "stopped: {} completed, {} failed, {} abandoned",
                    summary.completed, summary.failed, summary.abandoned
                ),
            ))),
            // The metrics count commits; the dashboard reads its own figures.
            WorkerEvent::Committed => {}
        }
    }
}

/// The descriptors the terminal had before the dashboard took it, for restoring it from
/// anywhere (a panic included).
struct Saved {
    stdout: OwnedFd,
    stderr: OwnedFd,
    tty: OwnedFd,
}

static SAVED: Mutex<Option<Saved>> = Mutex::new(None);

/// Leaves raw mode and the alternate screen, and puts stdout and stderr back. Idempotent.
fn restore_terminal() {
    let saved = SAVED.lock().unwrap_or_else(PoisonError::into_inner).take();
    let Some(saved) = saved else { return };
    let _ = terminal::disable_raw_mode();
    if let Ok(tty) = saved.tty.try_clone() {
        let mut tty = File::from(tty);
        let _ = execute!(tty, terminal::LeaveAlternateScreen, cursor::Show);
        let _ = tty.flush();
    }
    // SAFETY: dup2 onto the standard descriptors from descriptors we own.
    unsafe {
        libc::dup2(saved.stdout.as_raw_fd(), 1);
        libc::dup2(saved.stderr.as_raw_fd(), 2);
    }
}

fn dup(fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we own, or -1.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The terminal while the dashboard owns it.
struct Screen {
    terminal: Terminal<CrosstermBackend<File>>,
}

impl Screen {
    fn open(events: Sender<UiEvent>) -> io::Result<Screen> {
        let tty = dup(1)?;
        let saved = Saved {
            stdout: dup(1)?,
            stderr: dup(2)?,
            tty: tty.try_clone()?,
        };
        // Everything written to stdout or stderr from now on, by the worker, a thread task
        // or a panic, goes to the log pane instead of over the screen.
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        *SAVED.lock().unwrap_or_else(PoisonError::into_inner) = Some(saved);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        // SAFETY: dup2 onto the standard descriptors from a pipe we own.
        unsafe {
            libc::dup2(write.as_raw_fd(), 1);
            libc::dup2(write.as_raw_fd(), 2);
        }
        drop(write);
        std::thread::Builder::new()
            .name("castor-output".into())
            .spawn(move || {
                for line in BufReader::new(File::from(read)).lines() {
                    let Ok(line) = line else { break };
                    let _ = events.send(UiEvent::Log(LogLine {
                        at: clock(),
                        level: Level::Output,
                        source: Source::Output,
                        text: line,
                    }));
                }
            })?;
        terminal::enable_raw_mode()?;
        let mut out = File::from(tty);
        execute!(out, terminal::EnterAlternateScreen, cursor::Hide)?;
        let terminal = Terminal::new(CrosstermBackend::new(out))?;
        Ok(Screen { terminal })
    }

    fn draw(&mut self, state: &DashboardState) -> io::Result<()> {
        self.terminal.draw(|frame| render(state, frame))?;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore_terminal();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_slots_count_running_attempts_not_claims_waiting_for_one() {
        let mut state = DashboardState::new(Header {
            threads: 4,
            processes: 2,
            ..Header::default()
        });
        let task = |n: u128, mode, phase| RunningTask {
            id: Uuid::from_u128(n),
            task: "t".into(),
            mode,
            attempt: 1,
            max_attempts: 1,
            phase,
            elapsed: Duration::ZERO,
            progress: None,
        };
        for i in 0..21 {
            let phase = if i < 4 {
                Phase::Running
            } else {
                Phase::Waiting
            };
            state.task_started(task(i, TaskMode::Thread, phase));
        }
        state.task_started(task(100, TaskMode::Process, Phase::Waiting));
        assert_eq!(busy(&state), (4, 0));
        state.task_running(Uuid::from_u128(100), Duration::ZERO);
        assert_eq!(busy(&state), (4, 1));
    }
}
