//! The inspection subcommands: `list`, `show`, `retry`, `cancel`, `purge`, `stats`,
//! `schedules` (`check` and `migrate` have files of their own, dispatched by `main`, which
//! share this file's database lookup and output helpers). Human tables by default,
//! `--json` for scripts. They only read or change rows through castor-store; none of them
//! runs a task. They apply pending schema migrations when they open a database, as a
//! worker does, unless told `--no-migrate`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use abi_stable::std_types::{RResult, RSlice};
use anyhow::bail;
use castor_abi::Uuid;
use castor_abi::abi::ManagerDecl;
use castor_store::TaskState;
use castor_store::format::format_duration;
use castor_store::{
    CancelOutcome, Database, ErrorKind, Held, ListFilter, OpenOptions, RetryOutcome,
    SignatureCount, Signatures, Store, StoreError, TaskSnapshot, TaskSummary, WorkerRow,
    duration_us, now_us,
};
use serde::Serialize;

use crate::cli::{
    Command, DbArgs, IdsArgs, ListArgs, PluginTarget, PurgeArgs, ScheduleAction, SchedulesArgs,
    ShowArgs,
};
use crate::plugin::Plugin;
use crate::worker::timestamp;

/// Runs an inspection subcommand.
///
/// # Errors
/// The database cannot be found or read, or a task id is unknown.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::List(args) => list(&args),
        Command::Show(args) => show(&args),
        Command::Retry(args) => retry(&args),
        Command::Cancel(args) => cancel(&args),
        Command::Purge(args) => purge(&args),
        Command::Stats(args) => stats(&args),
        Command::Schedules(args) => schedules(&args),
        Command::Limits(args) => crate::limits::run(&args),
        Command::Check(_) | Command::Migrate(_) | Command::Child(_) | Command::CheckLibrary(_) => {
            bail!("castor's main dispatches this subcommand itself")
        }
    }
}

/// The database a subcommand works on, and the manager declaration if `--lib` was given.
pub(crate) fn open(args: &DbArgs) -> anyhow::Result<(Store, Option<ManagerDecl>)> {
    let (database, manager) = database(args.db.as_ref(), args.lib.as_ref())?;
    let options = OpenOptions {
        migrate: !args.no_migrate,
        ..OpenOptions::app()
    };
    let store = castor_store::open(&database, &options)?;
    Ok((store, manager))
}

/// The database a subcommand names (`--db`, else the library's manager's, else
/// `./tasks.db`), and the manager declaration if a library was given.
pub fn named_database(
    db: Option<&Database>,
    lib: Option<&PluginTarget>,
) -> anyhow::Result<(Database, Option<ManagerDecl>)> {
    let manager = match lib {
        Some(target) => Some(Plugin::load(&target.library)?.into_manager(&target.manager)?),
        None => None,
    };
    let database = match (db, &manager) {
        (Some(db), _) => db.clone(),
        (None, Some(manager)) => Database::parse(manager.database.as_str()),
        (None, None) => Database::parse("tasks.db"),
    };
    Ok((database, manager))
}

/// [`named_database`], which must exist.
pub fn database(
    db: Option<&Database>,
    lib: Option<&PluginTarget>,
) -> anyhow::Result<(Database, Option<ManagerDecl>)> {
    let (database, manager) = named_database(db, lib)?;
    if let Some(path) = database.sqlite_path()
        && !path.exists()
    {
        bail!(
            "no database at {} (say which with --db DATABASE, or --lib LIB[:MANAGER] for the \
             manager's)",
            path.display()
        );
    }
    Ok((database, manager))
}

pub(crate) fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn ago(at: i64, now: i64) -> String {
    let us = u64::try_from(now - at).unwrap_or(0);
    format_duration(Duration::from_secs(us / 1_000_000).max(Duration::from_micros(us.min(999_999))))
}

/// Prints rows as columns padded to their widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// One task of `list --json`: the row, and whether it waits for a worker of its signature.
#[derive(Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    task: &'a TaskSummary,
    /// Available with an argument fingerprint no live worker of its name runs.
    waiting_for_signature: bool,
    /// Available, and held back by a concurrency or rate limit: why.
    held: Option<String>,
}

/// The signatures the live workers run (those whose heartbeat is recent).
fn live_signatures(store: &Store, now: i64) -> Result<Signatures, StoreError> {
    store.signatures(now - duration_us(ALIVE_WITHIN))
}

/// A task's state as `list` and `show` print it: `available (waiting for a worker of its
/// signature 3f2a..)` when live workers run its name, none with its signature;
/// `available (held: concurrency 2/2 running)` when a limit holds it back.
fn state_shown(
    signatures: &Signatures,
    manager: &str,
    task: &str,
    state: TaskState,
    fp: Option<&str>,
    held: Option<&Held>,
) -> String {
    match (fp, held) {
        (Some(fp), _) if signatures.waits(manager, task, state, Some(fp)) => {
            format!("{state} (waiting for a worker of its signature {fp})")
        }
        (_, Some(held)) if state == TaskState::Available => format!("{state} ({held})"),
        _ => state.to_string(),
    }
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let (store, _) = open(&args.db)?;
    let tasks = store.list(&ListFilter {
        states: args.state.clone(),
        task: args.task.clone(),
        manager: args.manager.clone(),
        limit: args.limit,
    })?;
    let now = now_us();
    // One read of the live workers and of the limits for the whole list, not one per row.
    let signatures = live_signatures(&store, now)?;
    let limits = store.limit_status(args.manager.as_deref(), now)?;
    let held = |t: &TaskSummary| {
        (t.state == TaskState::Available)
            .then(|| {
                crate::limits::held(&limits, &t.manager, &t.task, t.concurrency_key.as_deref())
            })
            .flatten()
    };
    if args.db.json {
        let listed: Vec<Listed<'_>> = tasks
            .iter()
            .map(|task| Listed {
                task,
                waiting_for_signature: signatures.waits(
                    &task.manager,
                    &task.task,
                    task.state,
                    task.args_fingerprint.as_deref(),
                ),
                held: held(task).map(|h| h.to_string()),
            })
            .collect();
        return print_json(&listed);
    }
    if tasks.is_empty() {
        println!("no tasks");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t: &TaskSummary| {
            let mut error = t.last_error.clone().unwrap_or_default().replace('\n', " ");
            if error.chars().count() > 60 {
                error = error.chars().take(57).collect::<String>() + "...";
            }
            vec![
                t.id.to_string(),
                t.task.clone(),
                state_shown(
                    &signatures,
                    &t.manager,
                    &t.task,
                    t.state,
                    t.args_fingerprint.as_deref(),
                    held(t).as_ref(),
                ),
                format!("{}/{}", t.attempt, t.max_attempts),
                ago(t.created_at, now),
                if t.state == TaskState::Scheduled || t.state == TaskState::Retryable {
                    runs_in(t.scheduled_at, now)
                } else {
                    String::new()
                },
                error,
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "TASK",
            "STATE",
            "ATTEMPT",
            "AGE",
            "RUNS IN",
            "LAST ERROR",
        ],
        &rows,
    );
    Ok(())
}

/// `in 4.2s` for a time ahead, empty otherwise.
fn runs_in(at: i64, now: i64) -> String {
    match u64::try_from(at - now) {
        Ok(us) if us > 0 => format!("in {}", format_duration(Duration::from_micros(us))),
        _ => String::new(),
    }
}

fn schedules(args: &SchedulesArgs) -> anyhow::Result<()> {
    let (mut store, _) = open(&args.db)?;
    if let Some(action) = &args.action {
        let (id, paused) = match action {
            ScheduleAction::Pause { id } => (*id, Some(true)),
            ScheduleAction::Resume { id } => (*id, Some(false)),
            ScheduleAction::Remove { id } => (*id, None),
        };
        let found = match paused {
            Some(paused) => store.write(|tx| tx.set_schedule_paused(id, paused))?,
            None => store.write(|tx| tx.remove_schedule(id))?,
        };
        if !found {
            bail!("no schedule {id}");
        }
        let done = match paused {
            Some(true) => "paused",
            Some(false) => "resumed",
            None => "removed",
        };
        if args.db.json {
            return print_json(&serde_json::json!({ "id": id, "done": done }));
        }
        println!("{done} schedule {id}");
        return Ok(());
    }
    let list = store.schedules(None)?;
    if args.db.json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("no schedules");
        return Ok(());
    }
    let now = now_us();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let runs = match s.times {
                Some(times) => format!("{}/{times}", s.runs),
                None => s.runs.to_string(),
            };
            let next = match (s.paused, s.next_run_at) {
                (true, _) => "paused".to_owned(),
                (false, None) => "finished".to_owned(),
                (false, Some(at)) => match runs_in(at, now) {
                    ahead if ahead.is_empty() => "due now".to_owned(),
                    ahead => ahead,
                },
            };
            vec![
                s.id.to_string(),
                s.manager.clone(),
                s.task.clone(),
                s.name.clone().unwrap_or_default(),
                s.cadence.clone(),
                runs,
                next,
            ]
        })
        .collect();
    table(
        &[
            "ID", "MANAGER", "TASK", "PERIODIC", "CADENCE", "RUNS", "NEXT RUN",
        ],
        &rows,
    );
    Ok(())
}

/// What `show --json` prints.
#[derive(Serialize)]
struct Shown<'a> {
    id: Uuid,
    manager: &'a str,
    task: &'a str,
    state: TaskState,
    attempt: u32,
    max_attempts: u32,
    priority: i32,
    created_at: i64,
    scheduled_at: i64,
    attempted_at: Option<i64>,
    attempted_by: Option<&'a str>,
    finalized_at: Option<i64>,
    args_fingerprint: Option<&'a str>,
    result_fingerprint: Option<&'a str>,
    /// Available with an argument fingerprint no live worker of its name runs.
    waiting_for_signature: bool,
    /// The partition of its task's keyed concurrency limit.
    concurrency_key: Option<&'a str>,
    /// Its task's limits in force, if any (`concurrency 2 (declared)`, ...).
    limits: Option<String>,
    /// Available, and held back by a concurrency or rate limit: why.
    held: Option<String>,
    /// The tasks it runs after (`delay_after`), in the order their results are passed.
    parents: &'a [castor_store::ParentInfo],
    args: Decoded,
    result: Option<Decoded>,
    errors: &'a [castor_abi::AttemptError],
    logs: Vec<LogJson>,
}

#[derive(Serialize)]
struct LogJson {
    at: i64,
    attempt: u32,
    level: &'static str,
    line: String,
}

/// Stored bytes, decoded to JSON when the library is at hand.
#[derive(Serialize)]
#[serde(untagged)]
enum Decoded {
    Json(serde_json::Value),
    Raw { bytes: usize, note: String },
}

fn decode(
    manager: Option<&ManagerDecl>,
    task: &str,
    bytes: &[u8],
    result: bool,
    fingerprint: Option<&str>,
) -> Decoded {
    let raw = |note: String| Decoded::Raw {
        bytes: bytes.len(),
        note,
    };
    let Some(manager) = manager else {
        return raw("pass --lib LIB[:MANAGER] to decode".into());
    };
    let Some(decl) = manager.tasks.iter().find(|t| t.name.as_str() == task) else {
        return raw(format!("the library does not declare task `{task}`"));
    };
    let own = if result {
        decl.result_fingerprint.as_str()
    } else {
        decl.args_fingerprint.as_str()
    };
    if let Some(stored) = fingerprint
        && !own.is_empty()
        && stored != own
    {
        return raw(format!(
            "another signature: fingerprint {stored} != the library's {own}; pass the \
             library of its version to decode"
        ));
    }
    match (decl.describe)(RSlice::from(bytes), result) {
        RResult::ROk(json) => match serde_json::from_str(json.as_str()) {
            Ok(value) => Decoded::Json(value),
            Err(e) => raw(format!("undecodable: {e}")),
        },
        RResult::RErr(e) => raw(format!("does not decode as the task's type: {e}")),
    }
}

fn args_bytes(store: &Store, id: Uuid) -> anyhow::Result<Vec<u8>> {
    Ok(store.args_of(id)?.unwrap_or_default())
}

fn show(args: &ShowArgs) -> anyhow::Result<()> {
    let (store, manager) = open(&args.db)?;
    let Some(task): Option<TaskSnapshot> = store.snapshot(args.id)? else {
        bail!(
            "no task {} in the database (unknown id, or finished and pruned)",
            args.id
        );
    };
    let stored_args = args_bytes(&store, args.id)?;
    let parents = store.parents(args.id)?;
    // A dependent's first argument is made from its parents' results when they have all
    // completed; until then (or if it ended before) it holds only the others.
    let composed = parents.is_empty()
        || !(task.state == TaskState::Waiting
            || task.errors.last().map(|e| e.kind) == Some(ErrorKind::Chain));
    let decoded_args = if composed {
        decode(
            manager.as_ref(),
            &task.task,
            &stored_args,
            false,
            task.args_fingerprint.as_deref(),
        )
    } else {
        Decoded::Raw {
            bytes: stored_args.len(),
            note: "its arguments after the first, which its parents' results make".into(),
        }
    };
    let decoded_result = task.result.as_deref().map(|r| {
        decode(
            manager.as_ref(),
            &task.task,
            r,
            true,
            task.result_fingerprint.as_deref(),
        )
    });
    let logs = store.logs(args.id)?;
    let signatures = live_signatures(&store, now_us())?;
    let waiting = signatures.waits(
        &task.manager,
        &task.task,
        task.state,
        task.args_fingerprint.as_deref(),
    );
    let limits = store.limit_status(Some(&task.manager), now_us())?;
    let limit = limits.iter().find(|s| s.row.task == task.task);
    let held = limit
        .filter(|_| task.state == TaskState::Available)
        .and_then(|s| s.held(task.concurrency_key.as_deref()));
    let limits_shown = limit.map(|s| crate::limits::in_force(&s.row));
    if args.db.json {
        return print_json(&Shown {
            id: task.id,
            manager: &task.manager,
            task: &task.task,
            state: task.state,
            attempt: task.attempt,
            max_attempts: task.max_attempts,
            priority: task.priority,
            created_at: task.created_at,
            scheduled_at: task.scheduled_at,
            attempted_at: task.attempted_at,
            attempted_by: task.attempted_by.as_deref(),
            finalized_at: task.finalized_at,
            args_fingerprint: task.args_fingerprint.as_deref(),
            result_fingerprint: task.result_fingerprint.as_deref(),
            waiting_for_signature: waiting,
            concurrency_key: task.concurrency_key.as_deref(),
            limits: limits_shown,
            held: held.as_ref().map(ToString::to_string),
            parents: &parents,
            args: decoded_args,
            result: decoded_result,
            errors: &task.errors,
            logs: logs
                .into_iter()
                .map(|l| LogJson {
                    at: l.at,
                    attempt: l.attempt,
                    level: l.level.as_str(),
                    line: l.line,
                })
                .collect(),
        });
    }
    let render = |d: &Decoded| match d {
        Decoded::Json(v) => v.to_string(),
        Decoded::Raw { bytes, note } => format!("{bytes} bytes ({note})"),
    };
    println!("task       {} (manager {})", task.task, task.manager);
    println!("id         {}", task.id);
    println!(
        "state      {} (attempt {} of {})",
        state_shown(
            &signatures,
            &task.manager,
            &task.task,
            task.state,
            task.args_fingerprint.as_deref(),
            held.as_ref(),
        ),
        task.attempt,
        task.max_attempts
    );
    if waiting {
        println!(
            "           live workers of `{}` run args fingerprint {}; a worker built from \
             the library version it was dispatched with will run it",
            task.task,
            signatures.declared(&task.manager, &task.task).join(", ")
        );
    }
    let label = if task.state == TaskState::Waiting {
        "waits on"
    } else {
        "after"
    };
    for (i, parent) in parents.iter().enumerate() {
        println!(
            "{:<10} {} {} ({})",
            if i == 0 { label } else { "" },
            parent.id,
            parent.task,
            parent
                .state
                .map_or("purged or pruned", |state| state.as_str())
        );
    }
    println!("priority   {}", task.priority);
    if let Some(limits) = &limits_shown {
        let key = task
            .concurrency_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(|k| format!(" (its key: {k})"))
            .unwrap_or_default();
        println!("limits     {limits}{key}");
    }
    println!(
        "signature  args {}, result {}",
        task.args_fingerprint.as_deref().unwrap_or("unknown"),
        task.result_fingerprint.as_deref().unwrap_or("unknown")
    );
    println!("created    {}", timestamp(task.created_at));
    if task.scheduled_at > task.created_at {
        println!("scheduled  {}", timestamp(task.scheduled_at));
    }
    if let Some(at) = task.attempted_at {
        let by = task.attempted_by.as_deref().unwrap_or("?");
        println!("attempted  {} by worker {by}", timestamp(at));
    }
    if let Some(at) = task.finalized_at {
        println!("finished   {}", timestamp(at));
    }
    if let Some(progress) = &task.progress {
        println!(
            "progress   {}/{} {}",
            progress.done,
            progress.total,
            progress.message.as_deref().unwrap_or("")
        );
    }
    println!("arguments  {}", render(&decoded_args));
    if let Some(result) = &decoded_result {
        println!("result     {}", render(result));
    }
    if !task.errors.is_empty() {
        println!("errors");
        for e in &task.errors {
            println!(
                "  attempt {}  {}  {:<9}  {}",
                e.attempt,
                timestamp(e.at),
                e.kind,
                e.error
            );
        }
    }
    if !logs.is_empty() {
        println!("log ({} lines)", logs.len());
        for l in &logs {
            println!(
                "  {}  attempt {}  {:<5}  {}",
                timestamp(l.at),
                l.attempt,
                l.level.as_str(),
                l.line
            );
        }
    }
    Ok(())
}

/// What became of one id, as the user reads it: `castor retry` and `castor cancel` print
/// it, the dashboard shows it in its footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The operation was carried out (or its goal already held).
    Done(String),
    /// Nothing was done, and why.
    Refused(String),
}

/// What a retry or a cancel of one task did: the store's outcome (`None`: no such task)
/// and how to say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acted<T> {
    /// What the store did, for `--json`; `None` if the id is unknown.
    pub outcome: Option<T>,
    /// The sentence for the user.
    pub verdict: Verdict,
}

/// Makes a discarded or cancelled task `available` again, with one more attempt, in one
/// transaction; the code behind `castor retry` and the dashboard's `r`.
///
/// # Errors
/// The database cannot be written.
pub fn retry_task(store: &mut Store, id: Uuid) -> Result<Acted<RetryOutcome>, StoreError> {
    let now = now_us();
    let outcome = store.write(|tx| tx.retry(id, now))?;
    let verdict = match &outcome {
        None => Verdict::Refused(unknown_task(id)),
        Some(RetryOutcome::Retried) => Verdict::Done(format!(
            "retrying {id}: available again, with one more attempt"
        )),
        Some(RetryOutcome::Rewaited(TaskState::Waiting)) => {
            Verdict::Done(format!("retrying {id}: waiting on its parents again"))
        }
        Some(RetryOutcome::Rewaited(state @ (TaskState::Cancelled | TaskState::Discarded))) => {
            let why = store
                .snapshot(id)?
                .and_then(|t| t.errors.last().map(|e| e.error.clone()))
                .unwrap_or_default();
            Verdict::Refused(format!(
                "task {id} waits on its parents and is {state} again at once: {why}; retry \
                 the parent first, or dispatch the task again"
            ))
        }
        Some(RetryOutcome::Rewaited(state)) => Verdict::Done(format!(
            "retrying {id}: its parents have completed; it is {state} again"
        )),
        Some(RetryOutcome::NotRetryable(state)) => Verdict::Refused(format!(
            "task {id} is {state}: only discarded or cancelled tasks can be retried"
        )),
    };
    Ok(Acted { outcome, verdict })
}

/// Cancels a task that has not finished, in one transaction (a running one is stopped by
/// its worker); the code behind `castor cancel` and the dashboard's `c`.
///
/// # Errors
/// The database cannot be written.
pub fn cancel_task(store: &mut Store, id: Uuid) -> Result<Acted<CancelOutcome>, StoreError> {
    let now = now_us();
    let outcome = store.write(|tx| tx.cancel(id, now))?;
    let verdict = match &outcome {
        None => Verdict::Refused(unknown_task(id)),
        Some(CancelOutcome::Cancelled) => Verdict::Done(format!("cancelled {id}")),
        Some(CancelOutcome::Requested) => Verdict::Done(format!(
            "cancel requested for {id}: it is running; its worker stops it"
        )),
        Some(CancelOutcome::AlreadyFinished(TaskState::Cancelled)) => {
            Verdict::Done(format!("{id} was already cancelled"))
        }
        Some(CancelOutcome::AlreadyFinished(state)) => Verdict::Refused(format!(
            "task {id} already finished ({state}): there is nothing to cancel"
        )),
    };
    Ok(Acted { outcome, verdict })
}

fn unknown_task(id: Uuid) -> String {
    format!("no task {id} in the database (unknown id, or finished and pruned)")
}

/// Runs `act` on each id and prints what it did (or JSON). Fails if any id was refused
/// or unknown: with that refusal as the error for a single id, else with each refusal on
/// stderr and a count (`verb` says what was not done).
fn for_each_id<T: Serialize>(
    args: &IdsArgs,
    verb: &str,
    act: impl Fn(&mut Store, Uuid) -> Result<Acted<T>, StoreError>,
) -> anyhow::Result<()> {
    let (mut store, _) = open(&args.db)?;
    let mut refused = Vec::new();
    let mut results = Vec::new();
    for &id in &args.ids {
        let Acted { outcome, verdict } = act(&mut store, id)?;
        match verdict {
            Verdict::Done(text) if !args.db.json => println!("{text}"),
            Verdict::Done(_) => {}
            Verdict::Refused(text) => refused.push(text),
        }
        if let Some(outcome) = outcome {
            results.push((id, outcome));
        }
    }
    if args.db.json {
        print_json(&results)?;
    }
    match refused.as_slice() {
        [] => Ok(()),
        [only] if args.ids.len() == 1 => bail!("{only}"),
        _ => {
            for text in &refused {
                eprintln!("castor: {text}");
            }
            bail!(
                "{} of {} tasks were not {verb} (see above)",
                refused.len(),
                args.ids.len()
            )
        }
    }
}

fn retry(args: &IdsArgs) -> anyhow::Result<()> {
    for_each_id(args, "retried", retry_task)
}

fn cancel(args: &IdsArgs) -> anyhow::Result<()> {
    for_each_id(args, "cancelled", cancel_task)
}

fn purge(args: &PurgeArgs) -> anyhow::Result<()> {
    let (mut store, _) = open(&args.db)?;
    let states: Vec<TaskState> = args.state.iter().flatten().copied().collect();
    let before = now_us() - duration_us(args.older_than);
    let purged = store.write(|tx| tx.purge(&states, before))?;
    if args.db.json {
        return print_json(&serde_json::json!({ "purged": purged }));
    }
    let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    println!("purged {purged} task(s) ({})", names.join(", "));
    Ok(())
}

/// What `stats` reports.
#[derive(Serialize)]
struct Stats {
    /// manager -> task -> state -> count.
    counts: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    completed_last_minute: u64,
    completed_last_hour: u64,
    workers_alive: Vec<WorkerRow>,
    /// Waiting tasks whose name no live worker of their manager runs.
    unknown: Vec<Unknown>,
    /// Available tasks whose name live workers run, none with their argument fingerprint.
    waiting_for_signature: Vec<SignatureCount>,
    /// Tasks with a concurrency or rate limit in force.
    limits: Vec<LimitShown>,
}

/// A limited task in `stats`.
#[derive(Serialize)]
struct LimitShown {
    manager: String,
    task: String,
    /// The limits in force and where they come from.
    limits: String,
    running: u64,
    available: u64,
    /// Why its available tasks wait, if a limit holds them all.
    held: Option<String>,
}

#[derive(Serialize)]
struct Unknown {
    manager: String,
    task: String,
    waiting: u64,
}

/// A worker is listed as alive if its heartbeat is this recent.
const ALIVE_WITHIN: Duration = Duration::from_secs(60);

fn stats(args: &DbArgs) -> anyhow::Result<()> {
    let (store, _) = open(args)?;
    let now = now_us();
    let counts = store.counts()?;
    let workers: Vec<WorkerRow> = store
        .workers(true)?
        .into_iter()
        .filter(|w| now - w.heartbeat_at < duration_us(ALIVE_WITHIN))
        .collect();
    let live = Signatures::of_workers(&workers);
    let waiting_for_signature = store.waiting_for_signature(&live)?;
    let known: HashSet<(&str, &str)> = workers
        .iter()
        .flat_map(|w| {
            w.tasks
                .iter()
                .map(move |t| (w.manager.as_str(), t.as_str()))
        })
        .collect();
    let mut by_task: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>> = BTreeMap::new();
    let mut unknown: BTreeMap<(String, String), u64> = BTreeMap::new();
    for c in &counts {
        by_task
            .entry(c.manager.clone())
            .or_default()
            .entry(c.task.clone())
            .or_default()
            .insert(c.state.to_string(), c.count);
        let waiting = matches!(
            c.state,
            TaskState::Available | TaskState::Scheduled | TaskState::Retryable | TaskState::Waiting
        );
        if waiting && !known.contains(&(c.manager.as_str(), c.task.as_str())) {
            *unknown
                .entry((c.manager.clone(), c.task.clone()))
                .or_default() += c.count;
        }
    }
    let stats = Stats {
        counts: by_task,
        completed_last_minute: store.completed_since(now - 60_000_000)?,
        completed_last_hour: store.completed_since(now - 3_600_000_000)?,
        workers_alive: workers,
        unknown: unknown
            .into_iter()
            .map(|((manager, task), waiting)| Unknown {
                manager,
                task,
                waiting,
            })
            .collect(),
        waiting_for_signature,
        limits: store
            .limit_status(None, now)?
            .iter()
            .map(|s| LimitShown {
                manager: s.row.manager.clone(),
                task: s.row.task.clone(),
                limits: crate::limits::in_force(&s.row),
                running: s.running,
                available: s.available,
                held: s.held_task().map(|h| h.to_string()),
            })
            .collect(),
    };
    if args.json {
        return print_json(&stats);
    }
    let states = TaskState::ALL;
    let mut header = vec!["MANAGER", "TASK"];
    header.extend(states.iter().map(|s| s.as_str()));
    let mut rows = Vec::new();
    let mut totals = vec![0u64; states.len()];
    for (manager, tasks) in &stats.counts {
        for (task, by_state) in tasks {
            let mut row = vec![manager.clone(), task.clone()];
            for (i, state) in states.iter().enumerate() {
                let n = by_state.get(state.as_str()).copied().unwrap_or(0);
                totals[i] += n;
                row.push(n.to_string());
            }
            rows.push(row);
        }
    }
    let mut total = vec!["all".to_owned(), String::new()];
    total.extend(totals.iter().map(u64::to_string));
    rows.push(total);
    println!("tasks by state");
    table(&header, &rows);
    println!(
        "\nthroughput: {} completed in the last minute, {} in the last hour",
        stats.completed_last_minute, stats.completed_last_hour
    );
    println!("\nworkers alive: {}", stats.workers_alive.len());
    if !stats.workers_alive.is_empty() {
        let rows: Vec<Vec<String>> = stats
            .workers_alive
            .iter()
            .map(|w| {
                vec![
                    w.id.clone(),
                    w.manager.clone(),
                    w.hostname.clone(),
                    w.pid.to_string(),
                    format!("{}/{}", w.threads, w.processes),
                    format!("{} ago", ago(w.heartbeat_at, now)),
                    w.completed.to_string(),
                    w.failed.to_string(),
                ]
            })
            .collect();
        table(
            &[
                "ID",
                "MANAGER",
                "HOST",
                "PID",
                "THREADS/PROCS",
                "HEARTBEAT",
                "COMPLETED",
                "FAILED",
            ],
            &rows,
        );
    }
    if !stats.unknown.is_empty() {
        println!(
            "\nwaiting tasks no live worker runs (they stay until a worker that declares them starts):"
        );
        for u in &stats.unknown {
            println!("  {} / {}: {} waiting", u.manager, u.task, u.waiting);
        }
    }
    if !stats.limits.is_empty() {
        println!("\nlimits in force (castor limits set/clear overrides them):");
        for l in &stats.limits {
            println!(
                "  {} / {}: {}; {} running, {} available{}",
                l.manager,
                l.task,
                l.limits,
                l.running,
                l.available,
                l.held
                    .as_ref()
                    .map(|h| format!(", {h}"))
                    .unwrap_or_default()
            );
        }
    }
    if !stats.waiting_for_signature.is_empty() {
        println!(
            "\navailable tasks waiting for a worker of their signature (live workers run \
             another version of the task):"
        );
        for w in &stats.waiting_for_signature {
            println!(
                "  {} / {}: {} waiting, args fingerprint {} (live workers run {})",
                w.manager,
                w.task,
                w.count,
                w.args_fingerprint,
                live.declared(&w.manager, &w.task).join(", ")
            );
        }
    }
    Ok(())
}
