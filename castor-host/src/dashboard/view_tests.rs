//! Snapshot tests of the view over hand-built states (ratatui's `TestBackend` + insta).
//! Snapshots are in `snapshots/` beside this file, named after the test case alone so they
//! do not depend on the crate's name; review a change with `cargo insta review`, or run
//! with `INSTA_UPDATE=always` and read the diff.

use std::time::Duration;

use castor_abi::{TaskMode, Uuid};
use castor_store::TaskState;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::render;
use super::state::{
    DashboardState, FinishedTask, Header, Level, LogLine, Pane, Phase, Progress, RunningTask,
    ScheduleRow, ScheduledTask, Source, WorkerInfo,
};

const THIS_WORKER: &str = "0190f1e2aa3b7c4d8e9f0a1b2c3d4e5f";

/// Renders `state` at `width` x `height` and compares it with the snapshot `name`.
fn check(name: &str, state: &DashboardState, width: u16, height: u16) {
    let terminal = draw(state, width, height);
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!(name, terminal.backend()));
}

fn draw(state: &DashboardState, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal =
        Terminal::new(TestBackend::new(width, height)).expect("a TestBackend cannot fail");
    terminal
        .draw(|frame| render(state, frame))
        .expect("a TestBackend cannot fail");
    terminal
}

/// The high 80 bits of every test id: a UUIDv7 made on one day.
const ID_HIGH: u128 = 0x0190_f1e2_aa3b_7c4d_8e9f_0000_0000_0000;

/// A UUIDv7-looking id whose random end is made from `n`.
fn id(n: u64) -> Uuid {
    Uuid::from_u128(ID_HIGH | u128::from(n.wrapping_mul(0x9e37_79b9_7f4a) & 0xffff_ffff_ffff))
}

/// A log line's source: the task `task` whose id ends in `short`.
fn task(task: &str, short: u32) -> Source {
    Source::Task {
        task: task.into(),
        id: Uuid::from_u128(ID_HIGH | u128::from(short)),
    }
}

fn empty() -> DashboardState {
    DashboardState::new(Header {
        library: "/home/ada/quickstart/target/release/libquickstart.so".into(),
        manager: "manager".into(),
        database: "tasks.db".into(),
        worker_id: THIS_WORKER.into(),
        uptime: Duration::from_secs(3),
        threads: 4,
        threads_busy: 0,
        processes: 2,
        processes_busy: 0,
    })
}

fn running(
    n: u64,
    task: &str,
    mode: TaskMode,
    secs: f64,
    progress: Option<Progress>,
) -> RunningTask {
    RunningTask {
        id: id(n),
        task: task.into(),
        mode,
        attempt: 1,
        max_attempts: 3,
        phase: Phase::Running,
        elapsed: Duration::from_secs_f64(secs),
        progress,
    }
}

/// A process task this worker claimed while both child slots were busy.
fn waiting_for_a_slot(n: u64, task: &str) -> RunningTask {
    RunningTask {
        phase: Phase::Waiting,
        ..running(n, task, TaskMode::Process, 0.0, None)
    }
}

fn progress(done: u64, total: u64, message: Option<&str>) -> Option<Progress> {
    Some(Progress {
        done,
        total,
        message: message.map(str::to_owned),
    })
}

fn finished(n: u64, task: &str, state: TaskState, ms: u64, error: Option<&str>) -> FinishedTask {
    FinishedTask {
        id: id(n),
        task: task.into(),
        state,
        attempt: 1,
        max_attempts: 1,
        duration: Duration::from_millis(ms),
        error: error.map(str::to_owned),
        at: format!("15:21:{:02}", n % 60),
    }
}

fn log(state: &mut DashboardState, at: &str, level: Level, source: Source, text: &str) {
    state.log(LogLine {
        at: at.into(),
        level,
        source,
        text: text.into(),
    });
}

fn worker(id: &str, host: &str, pid: u32, ago_ms: u64, alive: bool, done: u64) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        hostname: host.into(),
        pid,
        manager: "manager".into(),
        last_heartbeat_ago: Duration::from_millis(ago_ms),
        alive,
        completed: done,
        failed: done / 97,
    }
}

/// A worker a while into a drain: five running tasks and two more claimed, waiting for a
/// child slot; a full recent list, statistics, a log and two workers.
fn busy() -> DashboardState {
    let mut s = empty();
    s.header.uptime = Duration::from_secs(3725);
    s.set_pool_busy(3, 2);
    s.set_counts([
        (TaskState::Waiting, 2),
        (TaskState::Scheduled, 12),
        (TaskState::Available, 340),
        (TaskState::Running, 5),
        (TaskState::Retryable, 2),
        (TaskState::Completed, 18_204),
        (TaskState::Discarded, 3),
        (TaskState::Cancelled, 1),
    ]);
    for n in 0..40 {
        let (task, ms) = match n % 4 {
            0 => ("send_email", 40 + n * 3),
            1 => ("resize_image", 900 + n * 40),
            2 => ("send_email", 55 + n),
            _ => ("import_csv", 2_000 + n * 100),
        };
        let state = if n == 37 {
            TaskState::Retryable
        } else {
            TaskState::Completed
        };
        let error = (n == 37).then_some("connection refused (os error 111)");
        s.task_finished(finished(n, task, state, ms, error));
    }
    s.task_started(running(
        100,
        "resize_image",
        TaskMode::Process,
        12.4,
        progress(9, 20, Some("tile 9/20")),
    ));
    s.task_started(running(101, "send_email", TaskMode::Thread, 0.35, None));
    s.task_started(running(
        102,
        "generate_quarterly_report",
        TaskMode::Process,
        201.0,
        progress(100, 400, Some("rendering page 100")),
    ));
    s.task_started(running(
        103,
        "import_csv",
        TaskMode::Thread,
        4.2,
        progress(12_345, 0, Some("rows")),
    ));
    s.task_started(running(
        104,
        "send_email",
        TaskMode::Thread,
        0.0008,
        progress(1, 1, None),
    ));
    s.task_started(waiting_for_a_slot(105, "resize_image"));
    s.task_started(waiting_for_a_slot(106, "generate_quarterly_report"));
    s.throughput = (0..120u64)
        .map(|i| (i * 2).min(90) + i * 7919 % 23)
        .collect();
    s.failures = (0..120u64)
        .map(|i| u64::from(i % 17 == 3) * (i % 3 + 1))
        .collect();
    s.rate = 64.2;
    s.oldest_available = Some(Duration::from_millis(12_400));
    log(
        &mut s,
        "14:19:12",
        Level::Info,
        Source::Worker,
        "started with 4 threads, 2 processes",
    );
    log(
        &mut s,
        "14:19:12",
        Level::Info,
        Source::Worker,
        "library /home/ada/quickstart/target/release/libquickstart.so",
    );
    for n in 0..6u64 {
        log(
            &mut s,
            "15:21:10",
            Level::Output,
            Source::Task {
                task: "resize_image".into(),
                id: id(n),
            },
            &format!("resized photo-{n}.jpg to 1024x768"),
        );
    }
    log(
        &mut s,
        "15:21:14",
        Level::Warn,
        task("import_csv", 0x5c2b7d31),
        "row 9120: empty email, skipped",
    );
    log(
        &mut s,
        "15:21:15",
        Level::Info,
        task("send_email", 0x1a2f0e9c),
        "sent to ada@example.com",
    );
    log(
        &mut s,
        "15:21:16",
        Level::Error,
        task("send_email", 0x8d40c66e),
        "attempt 1/3 failed: connection refused (os error 111); retry in 1.0s",
    );
    log(
        &mut s,
        "15:21:17",
        Level::Debug,
        Source::Worker,
        "claimed 5 tasks in 212us",
    );
    s.set_workers(vec![
        worker(THIS_WORKER, "build-1", 4242, 300, true, 18_100),
        worker(
            "0190f1d7c21e7f0a9b3c5d6e7f8a9b0c",
            "batch-2.internal.example.com",
            917,
            1_200,
            true,
            3_870,
        ),
        worker(
            "0190e001c21e7f0a9b3c5d6e7f8a1234",
            "laptop",
            31_337,
            95_000,
            false,
            12,
        ),
    ]);
    s.advance(Duration::ZERO);
    s
}

fn schedule(
    id: i64,
    task: &str,
    name: Option<&str>,
    cadence: &str,
    runs: u32,
    times: Option<u32>,
    next_in_ms: Option<u64>,
) -> ScheduleRow {
    ScheduleRow {
        id,
        task: task.into(),
        name: name.map(str::to_owned),
        cadence: cadence.into(),
        runs,
        times,
        next_run_in: next_in_ms.map(Duration::from_millis),
        paused: false,
    }
}

fn waiting(n: u64, task: &str, ms: u64) -> ScheduledTask {
    ScheduledTask {
        after: None,
        id: id(n),
        task: task.into(),
        runs_in: Duration::from_millis(ms),
    }
}

/// [`busy`], with schedules of every kind (interval, cron, a periodic task's, paused,
/// finished, due) and tasks waiting for their start time.
fn scheduling() -> DashboardState {
    let mut s = busy();
    s.set_schedules(vec![
        schedule(
            1,
            "send_digest",
            Some("weekly_digest"),
            "cron 0 9 * * 1",
            12,
            None,
            Some(7_500_000),
        ),
        schedule(
            2,
            "cleanup_tmp",
            Some("cleanup_tmp"),
            "every 30.0s",
            124,
            None,
            Some(4_200),
        ),
        ScheduleRow {
            paused: true,
            ..schedule(
                4,
                "import_csv",
                None,
                "every 5m 0s",
                3,
                Some(10),
                Some(80_000),
            )
        },
        schedule(7, "send_email", None, "every 1.0s", 5, Some(5), None),
        schedule(
            12,
            "generate_quarterly_report",
            None,
            "cron 0 0 1 */3 *",
            0,
            Some(4),
            Some(0),
        ),
    ]);
    s.set_scheduled(vec![
        waiting(300, "send_email", 4_200),
        waiting(301, "resize_image", 200),
        waiting(302, "import_csv", 65_000),
        waiting(303, "generate_quarterly_report", 7_500_000),
        waiting(304, "send_email", 9_000),
        waiting(305, "cleanup_tmp", 30_000),
        ScheduledTask {
            after: Some("render_invoice".into()),
            ..waiting(306, "send_invoice", 0)
        },
        ScheduledTask {
            after: Some("fetch_rates +2".into()),
            ..waiting(307, "summarize", 0)
        },
    ]);
    s.advance(Duration::ZERO);
    s
}

/// Discarded tasks with long, multi-line errors, panics in the log, a stop under way;
/// Recent is focused on a discarded task, so its whole error shows.
fn failures() -> DashboardState {
    let mut s = busy();
    s.set_counts([
        (TaskState::Available, 1_205_330),
        (TaskState::Running, 2),
        (TaskState::Retryable, 17),
        (TaskState::Completed, 48_002),
        (TaskState::Discarded, 211),
    ]);
    s.task_finished(finished(
        201,
        "charge_card",
        TaskState::Discarded,
        30_000,
        Some("timed out after 30.0s"),
    ));
    s.task_finished(finished(202, "render_pdf", TaskState::Discarded, 412, Some(
        "panicked at src/render.rs:118:9:\nindex out of bounds: the len is 3 but the index is 7",
    )));
    s.task_finished(finished(
        203,
        "sync_inventory",
        TaskState::Cancelled,
        9_800,
        Some("cancelled by a user"),
    ));
    s.task_finished(finished(204, "charge_card", TaskState::Discarded, 2_150, Some(
        "payment provider said: card_declined (insufficient_funds); the card was declined for the \
         amount requested and no retry will change that, so the task was discarded on purpose",
    )));
    log(
        &mut s,
        "15:22:01",
        Level::Error,
        task("render_pdf", 0x5e4c9f0a),
        "thread '<unnamed>' panicked at src/render.rs:118:9:\nindex out of bounds: the len is 3 but the index is 7\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
    );
    log(
        &mut s,
        "15:22:01",
        Level::Error,
        Source::Worker,
        "discarded  render_pdf 0190f1e2-aa3b-7c4d-8e9f-3c7a5e4c9f0a: attempt 1/1 after 412.0ms: panicked",
    );
    log(
        &mut s,
        "15:22:03",
        Level::Output,
        task("charge_card", 0x2a6f1c80),
        "\u{1b}[31mDECLINED\u{1b}[0m\tcard ending 4242",
    );
    s.focus = Pane::Recent;
    s.selection.recent = None;
    s.stopping = Some("waiting up to 30s for 5 running tasks; q again stops now".into());
    s.advance(Duration::ZERO);
    s
}

#[test]
fn empty_80x24() {
    check("empty_80x24", &empty(), 80, 24);
}

#[test]
fn busy_120x40() {
    check("busy_120x40", &busy(), 120, 40);
}

#[test]
fn busy_80x24() {
    check("busy_80x24", &busy(), 80, 24);
}

#[test]
fn failures_100x30() {
    let mut s = failures();
    check("failures_100x30", &s, 100, 30);
    s.focus = Pane::Logs;
    check("failures_log_100x30", &s, 100, 30);
}

/// Every thread busy and three more claims waiting for one: the header counts the busy
/// threads, the Running pane says how many wait and shows them without a clock; `c` on
/// a waiting one asks first.
#[test]
fn claimed_tasks_wait_apart_and_cancel_asks_80x24() {
    let mut s = empty();
    s.header.uptime = Duration::from_secs(90);
    for n in 0..4 {
        s.task_started(running(
            400 + n,
            "send_email",
            TaskMode::Thread,
            1.5 + n as f64,
            None,
        ));
    }
    for n in 0..3 {
        s.task_started(RunningTask {
            phase: Phase::Waiting,
            ..running(500 + n, "send_email", TaskMode::Thread, 0.0, None)
        });
    }
    s.set_pool_busy(4, 0);
    s.task_finished(finished(7, "send_email", TaskState::Completed, 1_250, None));
    s.advance(Duration::ZERO);
    s.apply(super::input::Action::Bottom);
    s.apply(super::input::Action::Up);
    s.apply(super::input::Action::CancelSelected);
    check("claimed_waiting_80x24", &s, 80, 24);
}

#[test]
fn narrow_50x12_shows_the_focused_pane() {
    let mut s = busy();
    s.focus = Pane::Logs;
    check("narrow_50x12_logs", &s, 50, 12);
    s.focus = Pane::Running;
    check("narrow_50x12_running", &s, 50, 12);
}

#[test]
fn help_overlay_80x24() {
    let mut s = busy();
    s.show_help = true;
    check("help_80x24", &s, 80, 24);
}

#[test]
fn scrolled_log_and_selection_100x30() {
    let mut s = busy();
    for i in 0..60 {
        log(
            &mut s,
            "15:23:00",
            Level::Info,
            Source::Worker,
            &format!("line {i}"),
        );
    }
    s.focus = Pane::Logs;
    s.selection.log_back = 15;
    s.flash(Level::Info, "cancel requested for resize_image 35d3be2a");
    check("scrolled_log_100x30", &s, 100, 30);
}

#[test]
fn schedules_120x40() {
    check("schedules_120x40", &scheduling(), 120, 40);
}

#[test]
fn schedules_focused_80x24() {
    let mut s = scheduling();
    s.focus = Pane::Schedules;
    s.selection.schedules = 2;
    check("schedules_focused_80x24", &s, 80, 24);
}

#[test]
fn narrow_50x12_schedules() {
    let mut s = scheduling();
    s.focus = Pane::Schedules;
    check("narrow_50x12_schedules", &s, 50, 12);
}

#[test]
fn any_size_renders_without_panicking() {
    let mut states = [empty(), busy(), failures(), scheduling()];
    states[1].show_help = true;
    states[2].selection.log_back = 3;
    states[3].selection.schedules = 4;
    let widths = [
        0, 1, 2, 5, 10, 20, 30, 49, 50, 59, 60, 61, 79, 80, 100, 120, 159, 160, 250,
    ];
    let heights = [0, 1, 2, 3, 5, 7, 8, 9, 10, 14, 15, 20, 24, 29, 30, 40, 60];
    // Every size once, with the state and the focus taking turns, keeps this quick in a
    // debug build.
    for (i, width) in widths.into_iter().enumerate() {
        for (j, height) in heights.into_iter().enumerate() {
            let state = &mut states[(i + j) % 4];
            state.focus = Pane::ALL[(i * 2 + j) % Pane::ALL.len()];
            draw(state, width, height);
        }
    }
}

#[test]
fn the_focused_pane_and_row_are_marked_without_colour() {
    let mut s = busy();
    s.focus = Pane::Running;
    s.selection.running = Some(id(102));
    let terminal = draw(&s, 120, 40);
    let screen = terminal.backend().to_string();
    let marked: Vec<&str> = screen.lines().filter(|l| l.contains('▶')).collect();
    assert_eq!(marked.len(), 1, "{screen}");
    assert!(marked[0].contains("generate_quarterly_report"), "{screen}");
    assert!(
        screen
            .lines()
            .any(|l| l.contains("Running 3/7 · 2 waiting for a slot ━")),
        "{screen}"
    );
}

#[test]
fn the_schedules_pane_renders_at_any_size_focused_or_not() {
    let mut s = scheduling();
    s.selection.schedules = 3;
    for width in [0, 1, 20, 40, 59, 60, 69, 70, 71, 80, 100, 160, 250] {
        for height in [0, 1, 2, 5, 9, 10, 14, 15, 16, 20, 24, 29, 30, 60] {
            for focus in [Pane::Schedules, Pane::Recent] {
                s.focus = focus;
                draw(&s, width, height);
            }
        }
    }
}

#[test]
fn waiting_tasks_show_without_schedules() {
    let mut s = busy();
    s.set_scheduled(vec![
        waiting(1, "resize_image", 200),
        waiting(2, "send_email", 4_200),
    ]);
    let terminal = draw(&s, 100, 30);
    let screen = terminal.backend().to_string();
    let lines: Vec<&str> = screen.lines().collect();
    let Some(top) = lines.iter().position(|l| l.contains("Schedules 0")) else {
        panic!("no Schedules pane: {screen}");
    };
    assert!(lines[top].contains("Waiting to start 2"), "{screen}");
    assert!(lines[top + 1].contains("no schedules"), "{screen}");
    assert!(lines[top + 2].contains("resize_image"), "{screen}");
    assert!(lines[top + 3].contains("in 4.2s"), "{screen}");
}

#[test]
fn wide_180x45_puts_the_panels_in_two_columns() {
    check("wide_180x45", &scheduling(), 180, 45);
}

/// Each panel alone, focused, over a 90x12 area: what the panel draws, whatever the
/// layout gives it.
#[test]
fn each_panel_alone_90x12() {
    let panes = [
        (Pane::Running, "running"),
        (Pane::Recent, "recent"),
        (Pane::Stats, "stats"),
        (Pane::Workers, "workers"),
        (Pane::Schedules, "schedules"),
        (Pane::Waiting, "waiting"),
        (Pane::Logs, "logs"),
    ];
    let mut s = scheduling();
    for (pane, name) in panes {
        s.focus = pane;
        let mut terminal =
            Terminal::new(TestBackend::new(90, 12)).expect("a TestBackend cannot fail");
        terminal
            .draw(|frame| {
                let area = frame.area();
                super::panels::panel(pane).render(&s, area, frame.buffer_mut(), true);
            })
            .expect("a TestBackend cannot fail");
        let mut settings = insta::Settings::clone_current();
        settings.set_prepend_module_to_snapshot(false);
        settings.bind(|| insta::assert_snapshot!(format!("panel_{name}"), terminal.backend()));
    }
}

/// The screen's text, row after row (no line breaks: a substring may not span rows).
fn text(terminal: &Terminal<TestBackend>) -> String {
    terminal
        .backend()
        .buffer()
        .content()
        .iter()
        .map(ratatui::buffer::Cell::symbol)
        .collect()
}

/// Tasks that live workers leave for a worker of their signature (type fingerprint) are
/// counted in the title of the counts.
#[test]
fn tasks_waiting_for_a_worker_of_their_signature_are_counted_in_the_title() {
    let mut s = busy();
    s.set_waiting_for_signature(vec![("charge".into(), 3), ("label".into(), 2)]);
    let screen = text(&draw(&s, 180, 45));
    assert!(
        screen.contains("Tasks by state · 5 for another build"),
        "{screen}"
    );
    s.set_waiting_for_signature(Vec::new());
    let screen = text(&draw(&s, 180, 45));
    assert!(!screen.contains("another build"), "{screen}");
}

fn limited() -> DashboardState {
    let mut s = busy();
    s.set_limits(vec![
        super::state::LimitLine {
            task: "send_email".into(),
            limits: "rate 20/s (declared)".into(),
            running: 1,
            available: 340,
            held: Some("held: rate 20/s, next slot in 0.3 s".into()),
        },
        super::state::LimitLine {
            task: "charge".into(),
            limits: "concurrency 2 (override; declared 4)".into(),
            running: 2,
            available: 12,
            held: Some("held: concurrency 2/2 running".into()),
        },
        super::state::LimitLine {
            task: "report".into(),
            limits: "concurrency 1 per customer (declared)".into(),
            running: 0,
            available: 0,
            held: None,
        },
    ]);
    s
}

/// With limits in force the Limits panel appears (left out otherwise): each task's
/// limits, where they come from, and why its tasks wait.
#[test]
fn the_limits_panel_shows_limits_in_force_and_what_they_hold() {
    let s = limited();
    let terminal = draw(&s, 180, 45);
    let screen = terminal.backend().to_string();
    assert!(screen.contains("Limits 3 · 2 held"), "{screen}");
    assert!(screen.contains("concurrency 2 (override"), "{screen}");
    assert!(screen.contains("concurrency 2/2 running"), "{screen}");
    assert!(screen.contains("rate 20/s, next slot in"), "{screen}");
    let without = draw(&busy(), 180, 45).backend().to_string();
    assert!(!without.contains("Limits"), "{without}");
    let mut terminal = Terminal::new(TestBackend::new(110, 6)).expect("a TestBackend cannot fail");
    terminal
        .draw(|frame| {
            let area = frame.area();
            super::panels::panel(Pane::Limits).render(&s, area, frame.buffer_mut(), false);
        })
        .expect("a TestBackend cannot fail");
    insta::assert_snapshot!("panel_limits", terminal.backend());
}
