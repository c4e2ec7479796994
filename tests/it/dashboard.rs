//! `castor -i` in a real terminal: tmux runs the dashboard, the test dispatches tasks,
//! reads the screen with `capture-pane`, presses `q`, and checks that the worker exited
//! 0 and gave the terminal back. On SQLite, and on PostgreSQL (the server
//! `CASTOR_TEST_POSTGRES` names, as for `postgres.rs`).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use castor_fixture_tasks as fx;

use crate::support::{PATIENCE, PgDatabase, TestDir, castor_bin, tasks_target, wait_for_state};

/// A tmux server of this test's own, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        let probe = Command::new("tmux").arg("-V").output();
        assert!(
            probe.is_ok_and(|o| o.status.success()),
            "tmux is needed for the dashboard test (.ci/run installs it: apt-get install tmux)"
        );
        Tmux {
            socket: format!("castor-it-{}", castor_abi::Uuid::now_v7().simple()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// Runs `command` in a 120x40 session named `castor`.
    fn start(&self, command: &str) {
        let started = self.run(&[
            "new-session",
            "-d",
            "-s",
            "castor",
            "-x",
            "120",
            "-y",
            "40",
            command,
        ]);
        assert!(started.status.success(), "{started:?}");
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "castor"]).stdout)
            .into_owned()
    }

    /// Waits until the screen shows every one of `needles`; returns it.
    fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if needles.iter().all(|n| screen.contains(n)) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {needles:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn the_dashboard_shows_tasks_and_quits_cleanly_on_q() {
    let dir = TestDir::new();
    let client = dir.client();
    let tmux = Tmux::new();
    let command = format!(
        "{} {} --db {} --processes 1 -i; echo castor-exit=$?; sleep 60",
        castor_bin().display(),
        tasks_target("manager"),
        dir.db().display()
    );
    tmux.start(&command);
    tmux.wait_for(&["Tasks by state", "Running", "Log"]);

    for i in 0..5 {
        fx::add::delay(&client, i, i).expect("delay");
    }
    let noisy = fx::noisy::delay(&client, 2).expect("delay");
    let panics = fx::panics::delay(&client, "the dashboard saw this".into()).expect("delay");
    noisy.join(PATIENCE).expect("noisy");
    panics.join(PATIENCE).expect_err("panics");

    let screen = tmux.wait_for(&["completed 6", "discarded 1", "the dashboard saw this"]);
    for name in ["add", "noisy", "panics"] {
        assert!(screen.contains(name), "{name} is not on screen:\n{screen}");
    }
    // The failure sparkline beside the throughput's, and the per-task p50, p95 and
    // failure rate (panics failed its one attempt: 100%).
    let screen = tmux.wait_for(&["Throughput", "Failed 1 in", "p50", "p95", "fail%", "100%"]);
    let panics_row = screen
        .lines()
        .find(|l| l.trim_start().starts_with("panics") && l.contains('%'));
    assert!(
        panics_row.is_some_and(|l| l.contains("100%")),
        "the panics row of Tasks by name: {panics_row:?}\n{screen}"
    );
    // A process task's prints are its log, on the screen, not scribbled over it.
    assert!(screen.contains("stdout line 2"), "{screen}");

    // Schedules and tasks waiting for their start time, with when they run next.
    let later = castor_abi::DelayOptions::new().after(Duration::from_secs(3600));
    fx::add::schedule(
        &client,
        &castor_abi::Schedule::every(Duration::from_secs(7200)).options(later.clone()),
        1,
        1,
    )
    .expect("schedule");
    fx::add::delay_with(&client, &later, 2, 2).expect("delay");
    tmux.wait_for(&["Schedules 1", "every 2h 0m", "Waiting to start", "in 59m"]);

    // `?` opens the key help; Esc closes it.
    tmux.run(&["send-keys", "-t", "castor", "?"]);
    tmux.wait_for(&["Keys"]);
    tmux.run(&["send-keys", "-t", "castor", "Escape"]);

    tmux.run(&["send-keys", "-t", "castor", "q"]);
    let screen = tmux.wait_for(&["castor-exit="]);
    assert!(screen.contains("castor-exit=0"), "{screen}");
    assert!(
        screen.contains("castor: stopped: 6 completed, 1 failed"),
        "the summary is printed on the restored terminal:\n{screen}"
    );
    let alternate = tmux.run(&["display", "-p", "-t", "castor", "#{alternate_on}"]);
    assert_eq!(String::from_utf8_lossy(&alternate.stdout).trim(), "0");
}

/// One thread and three claims: the two claims waiting for the thread are shown as
/// waiting, not running, and `c` on a running (or claimed) task asks before it cancels.
#[test]
fn claims_waiting_for_a_slot_are_shown_apart_and_cancel_asks_first() {
    let dir = TestDir::new();
    let client = dir.client();
    let tmux = Tmux::new();
    let command = format!(
        "{} {} --db {} --threads 1 --processes 1 -i; echo castor-exit=$?; sleep 60",
        castor_bin().display(),
        tasks_target("manager"),
        dir.db().display()
    );
    tmux.start(&command);
    tmux.wait_for(&["Tasks by state", "Running"]);

    // One transaction, so one claim takes all three.
    let handles = fx::sleep_ms::delay_many(&client, [(2_000,), (2_000,), (2_000,)]).expect("delay");
    let screen = tmux.wait_for(&["threads 1/1", "Running 1/3 · 2 waiting for a slot"]);
    let short = |h: &castor_abi::TaskHandle<u64>| {
        let id = h.id().simple().to_string();
        id[id.len() - 8..].to_owned()
    };
    let (first, waiting) = (short(&handles[0]), short(&handles[1]));
    let waiting_rows = screen
        .lines()
        .filter(|l| l.contains("sleep_ms") && l.contains(" waiting "))
        .count();
    assert_eq!(waiting_rows, 2, "{screen}");

    // `c` on the running task asks; `n` keeps it running.
    tmux.run(&["send-keys", "-t", "castor", "c"]);
    tmux.wait_for(&[&format!("cancel sleep_ms {first} (running)? y/n")]);
    tmux.run(&["send-keys", "-t", "castor", "n"]);
    // `c` on a claim waiting for the thread asks too; `y` cancels it.
    tmux.run(&["send-keys", "-t", "castor", "j"]);
    tmux.run(&["send-keys", "-t", "castor", "c"]);
    let screen = tmux.wait_for(&[&format!(
        "cancel sleep_ms {waiting} (claimed and waiting for a slot)? y/n"
    )]);
    assert!(
        !screen.contains("(running)? y/n"),
        "n took the question away:\n{screen}"
    );
    tmux.run(&["send-keys", "-t", "castor", "y"]);
    tmux.wait_for(&[&format!("cancel requested for {}", handles[1].id())]);
    assert_eq!(
        handles[0]
            .join(PATIENCE)
            .expect("the running task was kept"),
        2_000
    );

    tmux.run(&["send-keys", "-t", "castor", "q"]);
    let screen = tmux.wait_for(&["castor-exit="]);
    assert!(screen.contains("castor-exit=0"), "{screen}");
}

/// The count the "Tasks by state" band shows for `state` (its two lines under the title),
/// if it shows one.
fn count_of(screen: &str, state: castor_store::TaskState) -> Option<u64> {
    let mut lines = screen.lines().skip_while(|l| !l.contains("Tasks by state"));
    lines.next()?;
    let band: Vec<&str> = lines.take(2).flat_map(str::split_whitespace).collect();
    band.windows(2)
        .find(|pair| pair[0] == state.as_str())
        .and_then(|pair| pair[1].replace(',', "").parse().ok())
}

/// The dashboard on PostgreSQL: tasks completing, failing and running, as the worker
/// reports them and as the database counts them (read from the server, whose change
/// counter is unknown), the workers' pane, a cancel from the keyboard written to the
/// server, and a clean exit.
#[test]
fn the_dashboard_on_postgres_shows_tasks_flowing_and_cancels_from_the_keyboard() {
    use castor_store::TaskState;

    let db = PgDatabase::new();
    let client = fx::manager()
        .with_database(db.url.as_str())
        .open()
        .expect("open the app's client");
    let tmux = Tmux::new();
    let command = format!(
        "{} {} --db '{}' --threads 2 --processes 1 -i; echo castor-exit=$?; sleep 60",
        castor_bin().display(),
        tasks_target("manager"),
        db.url
    );
    tmux.start(&command);
    let screen = tmux.wait_for(&["Tasks by state", "Running", "Log"]);
    assert!(
        screen.contains("db postgres://"),
        "the header names the server:\n{screen}"
    );

    // Runs until it is cancelled: the running task on screen.
    let running = fx::wait_for_cancel::delay(&client).expect("delay");
    for i in 0..4 {
        fx::add::delay(&client, i, i)
            .expect("delay")
            .join(PATIENCE)
            .expect("add");
    }
    fx::fail::delay(&client, "failed on postgres".into())
        .expect("delay")
        .join(PATIENCE)
        .expect_err("fail");
    fx::panics::delay(&client, "panicked on postgres".into())
        .expect("delay")
        .join(PATIENCE)
        .expect_err("panics");
    wait_for_state(&running, TaskState::Running);

    tmux.wait_for(&[
        " Running 1 ━",
        "wait_for_cancel",
        "failed on postgres",
        "panicked on postgres",
        "Workers 1",
    ]);
    // The counts come from the server, refreshed without a change counter.
    let deadline = std::time::Instant::now() + PATIENCE;
    let screen = loop {
        let screen = tmux.screen();
        let counts = [
            TaskState::Running,
            TaskState::Completed,
            TaskState::Discarded,
        ]
        .map(|s| count_of(&screen, s));
        if counts == [Some(1), Some(4), Some(2)] {
            break screen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the counts on screen are {counts:?}, not running 1, completed 4, discarded 2:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Recent rows: `at state id task try took error`.
    let recent = |state: &str, task: &str| {
        screen
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|words| words.len() > 3 && words[1] == state && words[3] == task)
            .count()
    };
    assert_eq!(recent("completed", "add"), 4, "{screen}");
    assert_eq!(recent("discarded", "fail"), 1, "{screen}");
    assert_eq!(recent("discarded", "panics"), 1, "{screen}");
    let running_rows: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("wait_for_cancel"))
        .collect();
    assert!(
        running_rows.len() == 1 && running_rows[0].contains("thread"),
        "one running row for wait_for_cancel: {running_rows:?}\n{screen}"
    );
    // The workers' pane reads the server's castor_workers: this worker, with its counts.
    let this = screen
        .lines()
        .find(|l| l.trim_end().ends_with("this"))
        .unwrap_or_else(|| panic!("no row for this worker:\n{screen}"));
    let store = castor_store::Store::open(db.url.as_str(), castor_store::OpenOptions::inspect())
        .expect("open");
    let workers = store.workers(true).expect("workers");
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert!(
        this.contains(&workers[0].id[workers[0].id.len() - 8..])
            && this.contains(&format!(" {} ", workers[0].pid)),
        "the row of worker {} (pid {}): {this}",
        workers[0].id,
        workers[0].pid
    );

    // `c` on the running task (the only one, so selected), `y`: written to the server.
    tmux.run(&["send-keys", "-t", "castor", "c"]);
    tmux.wait_for(&["(running)? y/n"]);
    tmux.run(&["send-keys", "-t", "castor", "y"]);
    tmux.wait_for(&[&format!("cancel requested for {}", running.id())]);
    wait_for_state(&running, TaskState::Cancelled);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let screen = tmux.screen();
        let counts = [TaskState::Running, TaskState::Cancelled].map(|s| count_of(&screen, s));
        if counts == [Some(0), Some(1)] && screen.contains("no task running") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the cancel the counts on screen are {counts:?}:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    tmux.run(&["send-keys", "-t", "castor", "q"]);
    let screen = tmux.wait_for(&["castor-exit="]);
    assert!(screen.contains("castor-exit=0"), "{screen}");
    assert!(
        screen.contains("castor: stopped: 4 completed, 3 failed"),
        "{screen}"
    );
    let alternate = tmux.run(&["display", "-p", "-t", "castor", "#{alternate_on}"]);
    assert_eq!(String::from_utf8_lossy(&alternate.stdout).trim(), "0");
}

/// `castor -i --reload`: the dashboard gives the terminal back before the worker
/// re-executes itself on a new build, and the new process takes it over again.
#[test]
fn the_dashboard_comes_back_after_a_reload() {
    let dir = TestDir::new();
    let client = dir.client();
    let library = dir.path().join("libapp.so");
    std::fs::copy(crate::support::fixture_path("tasks"), &library).expect("copy the build");
    let tmux = Tmux::new();
    let command = format!(
        "{} {}:manager --db {} --processes 1 -i --reload; echo castor-exit=$?; sleep 60",
        castor_bin().display(),
        library.display(),
        dir.db().display()
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "castor",
        "-x",
        "120",
        "-y",
        "40",
        &command,
    ]);
    assert!(started.status.success(), "{started:?}");
    tmux.wait_for(&["Tasks by state", "Running", "Log"]);
    assert_eq!(
        fx::add::delay(&client, 1, 1)
            .expect("delay")
            .join(PATIENCE)
            .expect("join"),
        2
    );

    crate::reload::swap_in(&library, "tasks_v2");
    // The new build answers, under a dashboard again.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let sum = fx::add::delay(&client, 5, 5)
            .expect("delay")
            .join(PATIENCE)
            .expect("join");
        if sum == 1010 {
            break;
        }
        assert!(Instant::now() < deadline, "the new build never ran a task");
        std::thread::sleep(Duration::from_millis(50));
    }
    tmux.wait_for(&["Tasks by state", "Running", "Log"]);

    tmux.run(&["send-keys", "-t", "castor", "q"]);
    let screen = tmux.wait_for(&["castor-exit="]);
    assert!(screen.contains("castor-exit=0"), "{screen}");
    let alternate = tmux.run(&["display", "-p", "-t", "castor", "#{alternate_on}"]);
    assert_eq!(String::from_utf8_lossy(&alternate.stdout).trim(), "0");
}
