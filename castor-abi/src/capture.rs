//! Task logs from the logging ecosystem's macros: `tracing` events and spans and `log`
//! records made inside a task, forwarded to that task's log.
//!
//! A task library is a `cdylib` with its own copies of `log` and `tracing-core`, so the
//! worker's logger and subscriber never see its records. When a worker (or one of its
//! process-mode children) loads the library, it calls the root module's `attach`, which
//! installs here, in the library's own copies, a global `log::Log` and a global `tracing`
//! subscriber. Each record they accept goes through [`HostServices::log`]:
//! - to the task running on the recording thread: `__private::run` sets it around the
//!   task's call ([`TaskScope`]);
//! - else to the task that created an enclosing span (work a task hands to another
//!   thread inside its span, e.g. an instrumented future);
//! - else to the worker's own log, as the library's (the nil id).
//!
//! The line is rendered as `tracing-subscriber`'s default format would, less the time
//! and the level (stored apart): `outer{batch=3}:send{to="ada"}: my_crate::emails: sent
//! attempt=1`.
//!
//! An app that links the library as an `rlib`, or a unit test that calls a task function,
//! never calls `attach`: nothing is installed, and its own logger and subscriber see the
//! task's records as usual.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Once, OnceLock};

use abi_stable::std_types::RStr;
use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry, SpanRef};

use crate::abi::{HostCtx, HostServices, RawId};
use castor_store::LogLevel;

/// Where a record goes: a task's log (its id), or the library's (the nil id).
#[derive(Clone, Copy)]
struct Sink {
    services: &'static HostServices,
    id: RawId,
}

impl Sink {
    fn send(self, level: LogLevel, line: &str) {
        (self.services.log)(self.services.data, &self.id, level as u8, RStr::from(line));
    }
}

thread_local! {
    /// The task running on this thread, if any.
    static CURRENT: Cell<Option<Sink>> = const { Cell::new(None) };
}

/// The worker's services, for records made outside any task; null until `attach`.
static LIBRARY: AtomicPtr<HostServices> = AtomicPtr::new(ptr::null_mut());

/// The installed subscriber, for the span context of `log` records.
static DISPATCH: OnceLock<Dispatch> = OnceLock::new();

/// Marks the calling thread as running a task until dropped.
pub(crate) struct TaskScope {
    previous: Option<Sink>,
}

impl TaskScope {
    /// Records made on this thread go to `host`'s task until the scope is dropped.
    pub(crate) fn enter(host: &HostCtx<'_>) -> TaskScope {
        // SAFETY: the worker keeps its services for the rest of the process (see
        // `HostCtx::services`); spans a task creates may outlive its call and still
        // name it.
        let services: &'static HostServices = unsafe { &*ptr::from_ref(host.services) };
        let sink = Sink {
            services,
            id: host.task_id,
        };
        let previous = CURRENT.with(|current| current.replace(Some(sink)));
        TaskScope { previous }
    }
}

impl Drop for TaskScope {
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.previous));
    }
}

/// Installs the forwarding logger and subscriber (once per process) and makes `services`
/// the destination of records made outside any task. `filter` is a `Targets` list.
pub(crate) fn attach(services: &'static HostServices, filter: &str) {
    LIBRARY.store(ptr::from_ref(services).cast_mut(), Ordering::Release);
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| install(filter));
}

fn install(filter: &str) {
    let targets = parse_filter(filter);
    let max = <Targets as Layer<Registry>>::max_level_hint(&targets).unwrap_or(LevelFilter::INFO);
    let dispatch = Dispatch::new(Registry::default().with(targets.clone()).with(Forward));
    // A library that installed its own global subscriber (or logger) keeps it.
    if tracing_core::dispatcher::set_global_default(dispatch.clone()).is_ok() {
        let _ = DISPATCH.set(dispatch);
    }
    if log::set_boxed_logger(Box::new(LogForward { targets })).is_ok() {
        log::set_max_level(log_filter(max));
    }
}

/// `info` unless the filter names something.
fn parse_filter(filter: &str) -> Targets {
    match filter.trim() {
        "" => Targets::new().with_default(LevelFilter::INFO),
        filter => filter
            .parse()
            .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO)),
    }
}

fn log_filter(level: LevelFilter) -> log::LevelFilter {
    match level.into_level() {
        None => log::LevelFilter::Off,
        Some(Level::ERROR) => log::LevelFilter::Error,
        Some(Level::WARN) => log::LevelFilter::Warn,
        Some(Level::INFO) => log::LevelFilter::Info,
        Some(Level::DEBUG) => log::LevelFilter::Debug,
        Some(_) => log::LevelFilter::Trace,
    }
}

/// Stored levels: trace is kept as debug.
fn stored_level(level: Level) -> LogLevel {
    match level {
        Level::ERROR => LogLevel::Error,
        Level::WARN => LogLevel::Warn,
        Level::INFO => LogLevel::Info,
        _ => LogLevel::Debug,
    }
}

fn tracing_level(level: log::Level) -> Level {
    match level {
        log::Level::Error => Level::ERROR,
        log::Level::Warn => Level::WARN,
        log::Level::Info => Level::INFO,
        log::Level::Debug => Level::DEBUG,
        log::Level::Trace => Level::TRACE,
    }
}

fn library_sink() -> Option<Sink> {
    let services = LIBRARY.load(Ordering::Acquire);
    // SAFETY: only `attach` stores here, a `&'static HostServices`.
    let services: &'static HostServices = unsafe { services.as_ref() }?;
    Some(Sink {
        services,
        id: [0; 16],
    })
}

/// A span's fields as rendered, `a=1 b="x"`, kept in the registry's span data.
struct SpanFields(String);

/// The task that created a span.
struct SpanTask(Sink);

/// Renders fields as `tracing-subscriber`'s default formatter does: the message as is,
/// then `name=value` with strings quoted.
#[derive(Default)]
struct Render {
    message: String,
    fields: String,
}

impl Render {
    fn field(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        let name = field.name();
        // `log` records converted by `tracing-log` carry these; they are not user fields.
        if name.starts_with("log.") {
            return;
        }
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        let _ = write!(self.fields, "{name}={value}");
    }
}

impl Visit for Render {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.field(field, format_args!("{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.field(field, format_args!("{value:?}"));
        }
    }
}

/// Writes `outer{a=1}:inner: ` for the spans from the root down; returns the task of the
/// innermost span a task created.
fn write_spans<'a, R: LookupSpan<'a> + 'a>(
    spans: impl Iterator<Item = SpanRef<'a, R>>,
    line: &mut String,
) -> Option<Sink> {
    let mut task = None;
    let mut any = false;
    for span in spans {
        any = true;
        line.push_str(span.name());
        let extensions = span.extensions();
        if let Some(SpanFields(fields)) = extensions.get::<SpanFields>()
            && !fields.is_empty()
        {
            line.push('{');
            line.push_str(fields);
            line.push('}');
        }
        if let Some(SpanTask(sink)) = extensions.get::<SpanTask>() {
            task = Some(*sink);
        }
        line.push(':');
    }
    if any {
        line.push(' ');
    }
    task
}

/// The `tracing` side: keeps span fields and the task that created each span, and
/// forwards events.
struct Forward;

impl<S> Layer<S> for Forward
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut render = Render::default();
        attrs.record(&mut render);
        let mut fields = render.fields;
        if !render.message.is_empty() {
            fields.insert_str(0, &render.message);
        }
        let mut extensions = span.extensions_mut();
        extensions.insert(SpanFields(fields));
        if let Some(sink) = CURRENT.with(Cell::get) {
            extensions.insert(SpanTask(sink));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut render = Render::default();
        values.record(&mut render);
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
            for part in [render.message, render.fields] {
                if !part.is_empty() {
                    if !fields.is_empty() {
                        fields.push(' ');
                    }
                    fields.push_str(&part);
                }
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = String::with_capacity(128);
        let span_task = match ctx.event_scope(event) {
            Some(scope) => write_spans(scope.from_root(), &mut line),
            None => None,
        };
        let Some(sink) = CURRENT.with(Cell::get).or(span_task).or_else(library_sink) else {
            return;
        };
        let metadata = event.metadata();
        line.push_str(metadata.target());
        line.push_str(": ");
        let mut render = Render::default();
        event.record(&mut render);
        line.push_str(&render.message);
        if !render.fields.is_empty() {
            if !render.message.is_empty() {
                line.push(' ');
            }
            line.push_str(&render.fields);
        }
        sink.send(stored_level(*metadata.level()), &line);
    }
}

/// The `log` side: the same destinations, with the current `tracing` span's context.
struct LogForward {
    targets: Targets,
}

impl log::Log for LogForward {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.targets
            .would_enable(metadata.target(), &tracing_level(metadata.level()))
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = String::with_capacity(128);
        let span_task = current_spans(&mut line);
        let Some(sink) = CURRENT.with(Cell::get).or(span_task).or_else(library_sink) else {
            return;
        };
        line.push_str(record.target());
        line.push_str(": ");
        let _ = write!(line, "{}", record.args());
        sink.send(stored_level(tracing_level(record.level())), &line);
    }

    fn flush(&self) {}
}

/// Writes the current `tracing` span's scope for a `log` record.
fn current_spans(line: &mut String) -> Option<Sink> {
    let dispatch = DISPATCH.get()?;
    let current = dispatch.current_span();
    let registry = dispatch.downcast_ref::<Registry>()?;
    let span = registry.span(current.id()?)?;
    write_spans(span.scope().from_root(), line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_invalid_filter_forwards_info_and_above() {
        for filter in ["", "  ", "[span{x=1}]=debug"] {
            let targets = parse_filter(filter);
            assert!(targets.would_enable("any", &Level::INFO), "{filter:?}");
            assert!(!targets.would_enable("any", &Level::DEBUG), "{filter:?}");
        }
        let targets = parse_filter("info,my_crate::db=debug");
        assert!(targets.would_enable("my_crate::db", &Level::DEBUG));
        assert!(!targets.would_enable("my_crate::web", &Level::DEBUG));
    }

    #[test]
    fn levels_map_onto_the_stored_four() {
        assert_eq!(stored_level(Level::TRACE), LogLevel::Debug);
        assert_eq!(stored_level(Level::WARN), LogLevel::Warn);
        assert_eq!(log_filter(LevelFilter::OFF), log::LevelFilter::Off);
        assert_eq!(log_filter(LevelFilter::DEBUG), log::LevelFilter::Debug);
    }
}
