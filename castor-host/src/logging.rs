//! The worker's own log. Every line a worker prints is a `tracing` event, filtered by an
//! `EnvFilter` (`RUST_LOG`; without it `info`, `-q` hides completed tasks, `-v` is
//! `debug`) and written on stdout as text (close to plain `println!` lines) or as one
//! JSON object per line (`--log-format json`).
//!
//! Targets: [`BANNER`] (the start-up lines, no time stamp in text), `castor` (the worker's
//! life), [`TASK`] (an attempt's end: completed at info; retryable, cancelled or with a
//! lost lease at warn; discarded at error), [`TASK_LOG`] (a task's log lines, at debug:
//! they are stored with the task in any case), [`LIBRARY`] (a task library's `log` and
//! `tracing` records made outside any task), and [`OUTPUT`] (in JSON mode: whatever else
//! in the worker wrote to stdout, such as a thread task's `println!`, one line each).
//!
//! Lines are buffered: the coordinator [`hold`]s them while it reports a batch and
//! [`flush`]es after it; a line from any other thread is written at once.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::Registry;

/// The start-up lines (text: the message alone, then the worker's details).
pub const BANNER: &str = "castor::banner";
/// An attempt's end.
pub const TASK: &str = "castor::task";
/// A running task's log line.
pub const TASK_LOG: &str = "castor::task::log";
/// A task library's record made outside any task.
pub const LIBRARY: &str = "castor::library";
/// A line written to the worker's stdout by something else (JSON mode only).
pub const OUTPUT: &str = "castor::output";

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// A time stamp and a sentence, as a person reads them.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message and the event's
    /// fields (task_id, task, attempt, duration_ms, outcome, ..).
    Json,
}

/// The log could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `RUST_LOG` does not parse.
    #[error(
        "RUST_LOG=\"{directives}\" is not a valid log filter ({reason}); give a level and \
         targets, e.g. RUST_LOG=info or RUST_LOG=warn,castor=info"
    )]
    InvalidFilter {
        /// The variable's value.
        directives: String,
        /// The parser's message.
        reason: String,
    },
}

/// The installed log; flushes (and gives stdout back) when dropped.
pub struct Logging {
    task_filter: String,
    capture: Option<Capture>,
}

impl Logging {
    /// What task libraries forward to task logs: the filter's directives when they are a
    /// plain `target=level` list, else the most verbose level it enables.
    pub fn task_filter(&self) -> &str {
        &self.task_filter
    }
}

impl Drop for Logging {
    fn drop(&mut self) {
        flush();
        if let Some(capture) = self.capture.take() {
            capture.finish();
        }
        flush();
    }
}

/// The filter's directives: `RUST_LOG` if set, else from `-q` and `-v`.
pub fn directives(quiet: bool, verbose: u8) -> String {
    directives_from(std::env::var("RUST_LOG").ok(), quiet, verbose)
}

fn directives_from(env: Option<String>, quiet: bool, verbose: u8) -> String {
    match env {
        Some(env) if !env.trim().is_empty() => env,
        _ => match (verbose, quiet) {
            (0, true) => format!("info,{TASK}=warn"),
            (0, false) => "info".into(),
            (1, _) => "debug".into(),
            _ => "trace".into(),
        },
    }
}

/// Installs the worker's subscriber. In JSON mode (without the dashboard, which captures
/// stdout itself) stdout is moved into a pipe, so that a stray `println!` becomes a JSON
/// line too instead of breaking the stream.
///
/// # Errors
/// [`LogError::InvalidFilter`] if the directives do not parse.
pub fn init(directives: &str, format: LogFormat, interactive: bool) -> Result<Logging, LogError> {
    let filter = EnvFilter::builder()
        .parse(directives)
        .map_err(|e| LogError::InvalidFilter {
            directives: directives.to_owned(),
            reason: e.to_string(),
        })?;
    let task_filter = if directives.parse::<Targets>().is_ok() {
        directives.to_owned()
    } else {
        let max =
            <EnvFilter as Layer<Registry>>::max_level_hint(&filter).unwrap_or(LevelFilter::INFO);
        max.to_string().to_lowercase()
    };
    let mut capture = None;
    let mut pipe = None;
    if format == LogFormat::Json
        && !interactive
        && let Ok((started, read)) = Capture::start()
    {
        capture = Some(started);
        pipe = Some(read);
    }
    let fd = capture.as_ref().map_or(1, |c| c.saved.as_raw_fd());
    let _ = OUT.set(Out {
        fd: AtomicI32::new(fd),
        buffer: Mutex::new(Vec::with_capacity(BUFFER)),
    });
    let subscriber = Registry::default().with(filter).with(Lines { format });
    // Only `castor` itself calls this, once.
    let _ = tracing::subscriber::set_global_default(subscriber);
    if let (Some(capture), Some(read)) = (&mut capture, pipe) {
        capture.read(read);
    }
    Ok(Logging {
        task_filter,
        capture,
    })
}

/// Buffer up to this much before writing, even while held.
const BUFFER: usize = 64 * 1024;

/// Where lines go: a descriptor (stdout, or the saved stdout in JSON mode), written with
/// plain `write` calls so that the dashboard's capture of descriptor 1 catches them.
struct Out {
    fd: AtomicI32,
    buffer: Mutex<Vec<u8>>,
}

static OUT: OnceLock<Out> = OnceLock::new();

thread_local! {
    /// This thread reports a batch: its lines wait for [`flush`].
    static HOLD: Cell<bool> = const { Cell::new(false) };
}

impl Out {
    fn write_line(&self, line: &str) {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        buffer.extend_from_slice(line.as_bytes());
        buffer.push(b'\n');
        if !HOLD.with(Cell::get) || buffer.len() >= BUFFER {
            write_all(self.fd.load(Ordering::Relaxed), &buffer);
            buffer.clear();
        }
    }

    fn flush(&self) {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        write_all(self.fd.load(Ordering::Relaxed), &buffer);
        buffer.clear();
    }
}

fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a live buffer to a descriptor this process keeps open.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // Nobody reads stdout any more: nothing to do about it.
            return;
        }
        bytes = &bytes[usize::try_from(n).unwrap_or(bytes.len()).min(bytes.len())..];
    }
}

/// The calling thread's lines wait for [`flush`] (the coordinator, during a batch).
pub fn hold() {
    HOLD.with(|hold| hold.set(true));
}

/// Writes the lines held so far.
pub fn flush() {
    if let Some(out) = OUT.get() {
        out.flush();
    }
}

/// Lines are written at once again on this thread; the held ones now.
pub fn release() {
    HOLD.with(|hold| hold.set(false));
    flush();
}

/// Stdout moved into a pipe whose lines become [`OUTPUT`] events.
struct Capture {
    saved: OwnedFd,
    reader: Option<JoinHandle<()>>,
}

impl Capture {
    /// Moves stdout into a new pipe; returns the pipe's read end.
    fn start() -> std::io::Result<(Capture, OwnedFd)> {
        // SAFETY: plain descriptor syscalls; every new descriptor is owned at once.
        unsafe {
            let saved = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
            if saved < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let saved = OwnedFd::from_raw_fd(saved);
            let mut fds = [0; 2];
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let (read, write) = (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]));
            if libc::dup2(write.as_raw_fd(), 1) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok((
                Capture {
                    saved,
                    reader: None,
                },
                read,
            ))
        }
    }

    /// Starts the thread that turns the pipe's lines into events (once the subscriber
    /// is installed).
    fn read(&mut self, read: OwnedFd) {
        self.reader = std::thread::Builder::new()
            .name("castor-stdout".into())
            .spawn(move || {
                for line in BufReader::new(File::from(read)).lines() {
                    let Ok(line) = line else { break };
                    tracing::info!(target: OUTPUT, "{line}");
                }
            })
            .ok();
    }

    /// Gives stdout back and waits (briefly) for the last captured lines.
    fn finish(self) {
        // SAFETY: dup2 onto stdout from a descriptor we own; this closes the pipe's last
        // write end, unless a process the worker started still holds it.
        unsafe {
            libc::dup2(self.saved.as_raw_fd(), 1);
        }
        if let Some(reader) = self.reader {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Later lines (the error main prints, say) go to stdout itself.
        if let Some(out) = OUT.get() {
            out.flush();
            out.fd.store(1, Ordering::Relaxed);
        }
    }
}

/// A field's value, kept typed for JSON.
enum Value {
    Str(String),
    Debug(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) | Value::Debug(s) => f.write_str(s),
            Value::I64(n) => write!(f, "{n}"),
            Value::U64(n) => write!(f, "{n}"),
            Value::F64(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// An event's message and fields, in order.
#[derive(Default)]
struct Fields {
    message: String,
    list: Vec<(&'static str, Value)>,
}

impl Fields {
    fn get(&self, name: &str) -> Option<&Value> {
        self.list.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    fn text(&self, name: &str) -> String {
        self.get(name).map(ToString::to_string).unwrap_or_default()
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.list.push((field.name(), Value::Str(value.to_owned())));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.list
                .push((field.name(), Value::Debug(format!("{value:?}"))));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.list.push((field.name(), Value::I64(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.list.push((field.name(), Value::U64(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.list.push((field.name(), Value::F64(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.list.push((field.name(), Value::Bool(value)));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.list
            .push((field.name(), Value::Str(value.to_string())));
    }
}

/// The layer that writes lines.
struct Lines {
    format: LogFormat,
}

impl<S: Subscriber> Layer<S> for Lines {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let Some(out) = OUT.get() else { return };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = match self.format {
            LogFormat::Text => text(
                event.metadata().target(),
                *event.metadata().level(),
                &fields,
            ),
            LogFormat::Json => json(
                event.metadata().target(),
                *event.metadata().level(),
                &fields,
            ),
        };
        out.write_line(&line);
    }
}

fn now() -> String {
    castor_store::format::format_timestamp(castor_store::now_us())
}

/// A text line: castor's own events are a time stamp and their sentence, as before they
/// went through `tracing`; anything else also shows its level, target and fields.
fn text(target: &str, level: Level, fields: &Fields) -> String {
    let message = &fields.message;
    match target {
        BANNER => banner(fields),
        LIBRARY => format!("{} library {level} {message}", now()),
        TASK_LOG => format!(
            "{} log        {} {} {}: {message}",
            now(),
            fields.text("task"),
            fields.text("task_id"),
            fields.text("task_level"),
        ),
        _ if target == "castor" || target.starts_with("castor::") => {
            format!("{} {message}", now())
        }
        _ => {
            let mut line = format!("{} {level} {target}: {message}", now());
            for (name, value) in &fields.list {
                match value {
                    Value::Str(s) => {
                        let _ = write!(line, " {name}={s:?}");
                    }
                    other => {
                        let _ = write!(line, " {name}={other}");
                    }
                }
            }
            line
        }
    }
}

/// `castor 0.1.0 worker ID started` and the worker's details, one per line.
fn banner(fields: &Fields) -> String {
    let mut text = fields.message.clone();
    if let Some(library) = fields.get("library") {
        let _ = write!(text, "\n  library   {library}");
    }
    if let Some(manager) = fields.get("manager") {
        let _ = write!(
            text,
            "\n  manager   {manager}: {}",
            wrap(&fields.text("tasks"), 12)
        );
    }
    if let Some(database) = fields.get("database") {
        let _ = write!(text, "\n  database  {database}");
    }
    if let Some(threads) = fields.get("threads") {
        let _ = write!(text, "\n  pool      {threads} thread(s)");
        match fields.get("processes") {
            Some(Value::U64(0)) | None => {}
            Some(n) => {
                let _ = write!(text, ", {n} process(es)");
            }
        }
    }
    text
}

/// A `a, b, c` list wrapped at 96 columns, continuation lines indented by `indent`.
fn wrap(list: &str, indent: usize) -> String {
    const WIDTH: usize = 96;
    let mut text = String::new();
    let mut column = indent;
    let items: Vec<&str> = list.split(", ").collect();
    for (i, item) in items.iter().enumerate() {
        let item = if i + 1 < items.len() {
            format!("{item},")
        } else {
            (*item).to_owned()
        };
        if column > indent && column + 1 + item.len() > WIDTH {
            text.push('\n');
            text.push_str(&" ".repeat(indent));
            column = indent;
        } else if column > indent {
            text.push(' ');
            column += 1;
        }
        column += item.len();
        text.push_str(&item);
    }
    text
}

/// One JSON object: timestamp, level, target, message, then the fields in order.
fn json(target: &str, level: Level, fields: &Fields) -> String {
    let string = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut line = format!(
        "{{\"timestamp\":{},\"level\":\"{level}\",\"target\":{},\"message\":{}",
        string(&now()),
        string(target),
        string(&fields.message)
    );
    for (name, value) in &fields.list {
        let value = match value {
            Value::Str(s) | Value::Debug(s) => string(s),
            Value::I64(n) => n.to_string(),
            Value::U64(n) => n.to_string(),
            Value::F64(n) if n.is_finite() => n.to_string(),
            Value::F64(_) => "null".into(),
            Value::Bool(b) => b.to_string(),
        };
        let _ = write!(line, ",{}:{value}", string(name));
    }
    line.push('}');
    line
}

/// `tracing::event!` with a level known only at run time.
#[macro_export]
macro_rules! event_at {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            ::tracing::Level::ERROR => ::tracing::error!($($rest)+),
            ::tracing::Level::WARN => ::tracing::warn!($($rest)+),
            ::tracing::Level::INFO => ::tracing::info!($($rest)+),
            ::tracing::Level::DEBUG => ::tracing::debug!($($rest)+),
            _ => ::tracing::trace!($($rest)+),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(message: &str, list: Vec<(&'static str, Value)>) -> Fields {
        Fields {
            message: message.into(),
            list,
        }
    }

    #[test]
    fn json_lines_are_one_object_with_typed_fields() {
        let f = fields(
            "completed  add 0192 in 1.0ms",
            vec![
                ("task_id", Value::Debug("0192".into())),
                ("attempt", Value::U64(1)),
                ("duration_ms", Value::F64(1.25)),
                ("lost", Value::Bool(false)),
                ("quote", Value::Str("a \"b\"\nc".into())),
            ],
        );
        let line = json(TASK, Level::INFO, &f);
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["target"], TASK);
        assert_eq!(value["message"], "completed  add 0192 in 1.0ms");
        assert_eq!(value["task_id"], "0192");
        assert_eq!(value["attempt"], 1);
        assert_eq!(value["duration_ms"], 1.25);
        assert_eq!(value["lost"], false);
        assert_eq!(value["quote"], "a \"b\"\nc");
    }

    #[test]
    fn text_lines_keep_the_plain_format() {
        let line = text(
            TASK,
            Level::INFO,
            &fields("completed  add 0192 in 1.0ms", vec![]),
        );
        let (stamp, rest) = line.split_once(' ').expect("a time stamp");
        assert!(stamp.ends_with('Z'), "{line}");
        assert_eq!(rest, "completed  add 0192 in 1.0ms");
        let banner = text(
            BANNER,
            Level::INFO,
            &fields(
                "castor 0.1.0 worker abc started",
                vec![
                    ("library", Value::Str("/x/lib.so".into())),
                    ("manager", Value::Str("manager".into())),
                    ("tasks", Value::Str("add (thread)".into())),
                    ("database", Value::Str("tasks.db".into())),
                    ("threads", Value::U64(2)),
                    ("processes", Value::U64(0)),
                ],
            ),
        );
        assert_eq!(
            banner,
            "castor 0.1.0 worker abc started\n  library   /x/lib.so\n  manager   manager: add \
             (thread)\n  database  tasks.db\n  pool      2 thread(s)"
        );
        let other = text(
            "hyper::client",
            Level::WARN,
            &fields(
                "slow",
                vec![("host", Value::Str("a".into())), ("ms", Value::U64(3))],
            ),
        );
        assert!(
            other.ends_with(" WARN hyper::client: slow host=\"a\" ms=3"),
            "{other}"
        );
    }

    #[test]
    fn quiet_hides_completed_tasks_and_verbose_shows_debug() {
        assert_eq!(directives_from(None, false, 0), "info");
        assert_eq!(directives_from(None, true, 0), "info,castor::task=warn");
        assert_eq!(directives_from(None, false, 1), "debug");
        assert_eq!(directives_from(None, true, 2), "trace");
        // RUST_LOG wins over the flags.
        assert_eq!(directives_from(Some("warn".into()), true, 1), "warn");
        assert_eq!(directives_from(Some(" ".into()), false, 0), "info");
    }
}
