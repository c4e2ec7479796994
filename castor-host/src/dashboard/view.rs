//! Draws a [`DashboardState`] into a frame, and nothing else: no clock, no database, no
//! mutation, so the same state always gives the same screen (`view_tests.rs` snapshots
//! it).
//!
//! From 60x15 up, top to bottom: a two-line header; task counts by state (with the age
//! of the oldest task waiting to be claimed) beside the throughput sparkline and, where
//! there is room, the failures' one; the panels, where `layout` puts them for the
//! terminal's size; a footer with key hints (the focused panel's `keys`), or the flash
//! message and the stopping notice. Smaller than 60x15, only the header, the counts and
//! the focused panel are drawn (Tab still cycles). Whatever does not fit is cut, never a
//! panic, and narrow tables drop their least useful columns first.
//!
//! The focused pane has a thick, coloured top rule and its selected row a `▶` and a
//! highlight, so focus shows without colour too. Tables page rather than scroll: the
//! window starts at a multiple of its height, so the highlight moves over rows that stay
//! put until it leaves the page. The log wraps its lines and keeps the line the selection
//! points at on its bottom row.

use std::collections::VecDeque;
use std::time::Duration;

use castor_store::TaskState;
use castor_store::format::format_duration;

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::symbols::border;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Cell, Clear, Paragraph, RenderDirection, Row, Sparkline, Table, Widget,
};

use super::input::HELP;
use super::layout::{Size, arrange};
use super::panels::panel;
use super::state::{DashboardState, Pane, short_id};
use super::widgets::*;

/// Below this width or height only the header, the counts and the focused pane are shown.
const FULL_WIDTH: u16 = 60;
/// See [`FULL_WIDTH`].
const FULL_HEIGHT: u16 = 15;
/// Draws the whole dashboard over the frame.
pub fn render(state: &DashboardState, frame: &mut Frame) {
    let area = frame.area();
    let buf = frame.buffer_mut();
    if area.width >= FULL_WIDTH && area.height >= FULL_HEIGHT {
        full(state, area, buf);
    } else {
        compact(state, area, buf);
    }
    if state.show_help {
        help(area, buf);
    }
}

fn full(state: &DashboardState, area: Rect, buf: &mut Buffer) {
    let [header_area, band, middle, footer_area] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(3),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    header(state, header_area, buf);
    let [counts_area, spark_area] =
        Layout::horizontal([Constraint::Length(counts_width(state)), Constraint::Fill(1)])
            .spacing(3)
            .areas(band);
    counts(state, counts_area, buf, true);
    sparklines(state, spark_area, buf);
    for (which, rect) in arrange(state, middle, Size::of(area.width, area.height)) {
        pane(state, which, rect, buf);
    }
    footer(state, footer_area, buf);
}

fn compact(state: &DashboardState, area: Rect, buf: &mut Buffer) {
    let (footer_area, rest) = take_bottom(area, u16::from(area.height >= 2));
    let (header_area, rest) = take_top(rest, if area.height >= 8 { 2 } else { 0 });
    let (counts_area, rest) = take_top(rest, if area.height >= 10 { 2 } else { 0 });
    header(state, header_area, buf);
    counts(state, counts_area, buf, false);
    pane(state, state.focus, rest, buf);
    footer(state, footer_area, buf);
}

fn header(state: &DashboardState, area: Rect, buf: &mut Buffer) {
    if area.is_empty() {
        return;
    }
    let h = &state.header;
    let width = usize::from(area.width);
    let mut first = vec![
        Span::styled("castor", Style::new().fg(FOCUS).bold()),
        Span::styled("  manager ", LABEL),
        Span::raw(h.manager.clone()),
        Span::styled("  db ", LABEL),
        Span::raw(fit_database(&h.database, (width / 3).max(12))),
    ];
    // Paths are cut at the left, so the file name stays (a URL at the right, so its
    // engine, host and database stay); the library gets what is left, or no place at all
    // if that is too little to recognise it.
    let room = width.saturating_sub(Line::from(first.clone()).width() + "  library ".len());
    if room >= 12 {
        first.push(Span::styled("  library ", LABEL));
        first.push(Span::raw(fit_left(&h.library, room)));
    }
    let wide = width >= 80;
    let (threads, processes) = if width >= 64 {
        ("threads", "processes")
    } else {
        ("thr", "proc")
    };
    let mut second = vec![
        Span::styled("worker ", LABEL),
        Span::raw(short_id(&h.worker_id).to_owned()),
        Span::styled("  up ", LABEL),
        Span::raw(format_duration(h.uptime)),
    ];
    second.extend(pool(threads, h.threads_busy, h.threads, wide));
    second.extend(pool(processes, h.processes_busy, h.processes, wide));
    Paragraph::new(vec![Line::from(first), Line::from(second)]).render(area, buf);
}

/// `  threads 3/4 ■■■·`: the meter has one mark per slot up to 16 slots.
fn pool(label: &str, busy: usize, size: usize, meter: bool) -> Vec<Span<'static>> {
    let full = size > 0 && busy >= size;
    let value_style = if full {
        Style::new().fg(Color::Yellow).bold()
    } else {
        Style::new()
    };
    let mut spans = vec![
        Span::styled(format!("  {label} "), LABEL),
        Span::styled(format!("{busy}/{size}"), value_style),
    ];
    if meter && size > 0 && size <= 16 {
        let busy = busy.min(size);
        spans.push(Span::raw(" "));
        spans.push(Span::styled(
            "■".repeat(busy),
            Style::new().fg(Color::Green),
        ));
        spans.push(Span::styled("·".repeat(size - busy), DIM));
    }
    spans
}

/// One state's count as the band shows it: the state's name (or its abbreviation) and
/// how many tasks are in it.
struct CountCell {
    state: TaskState,
    name: &'static str,
    n: u64,
}

/// The counts as a grid of two rows; each column as wide as its widest cell.
fn count_cells(state: &DashboardState, short: bool) -> [Vec<CountCell>; 2] {
    let split = state.counts.len().div_ceil(2);
    let mut rows = [Vec::new(), Vec::new()];
    for (i, &(task_state, n)) in state.counts.iter().enumerate() {
        let name = if short {
            abbreviation(task_state)
        } else {
            task_state.as_str()
        };
        rows[usize::from(i >= split)].push(CountCell {
            state: task_state,
            name,
            n,
        });
    }
    rows
}

fn column_widths(rows: &[Vec<CountCell>; 2]) -> Vec<usize> {
    let cell = |c: &CountCell| c.name.chars().count() + 1 + thousands(c.n).len();
    (0..rows[0].len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(cell)
                .max()
                .unwrap_or(0)
        })
        .collect()
}

fn grid_width(widths: &[usize]) -> usize {
    widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1)
}

fn counts_width(state: &DashboardState) -> u16 {
    let widths = column_widths(&count_cells(state, false));
    u16::try_from(grid_width(&widths)).unwrap_or(u16::MAX)
}

fn counts(state: &DashboardState, area: Rect, buf: &mut Buffer, titled: bool) {
    let inner = if titled {
        let mut title = vec![" Tasks by state ".bold()];
        // Available tasks the live workers leave for a worker of their signature (type
        // fingerprint): the worker's log line names them.
        let other_build: u64 = state.waiting_for_signature.iter().map(|(_, n)| n).sum();
        if other_build > 0 {
            title.push(Span::styled(
                format!("· {other_build} for another build "),
                Style::new().fg(Color::Yellow).bold(),
            ));
        }
        if let Some(age) = state.oldest_available {
            title.push(Span::styled("· oldest waiting ", LABEL));
            title.push(Span::styled(
                format!("{} ", format_duration(age)),
                Style::new().fg(Color::Yellow).bold(),
            ));
        }
        let block = rule(Line::from(title), false);
        let inner = block.inner(area);
        block.render(area, buf);
        inner
    } else {
        area
    };
    let mut rows = count_cells(state, false);
    let mut widths = column_widths(&rows);
    if grid_width(&widths) > usize::from(inner.width) {
        rows = count_cells(state, true);
        widths = column_widths(&rows);
    }
    let lines: Vec<Line> = rows
        .iter()
        .map(|row| {
            let mut spans = Vec::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    spans.push(Span::raw("  "));
                }
                let value = thousands(cell.n);
                let pad = widths[i].saturating_sub(cell.name.chars().count() + value.len());
                let value_style = if cell.n == 0 {
                    DIM
                } else {
                    Style::new().bold()
                };
                spans.push(Span::styled(cell.name, state_style(cell.state)));
                spans.push(Span::raw(" ".repeat(pad)));
                spans.push(Span::styled(value, value_style));
            }
            Line::from(spans)
        })
        .collect();
    Paragraph::new(lines).render(inner, buf);
}

/// From this width of the band's right side on, failures get a sparkline of their own
/// beside the throughput's.
const FAILURES_BESIDE_WIDTH: u16 = 44;

/// The band's right side: the throughput sparkline and, where there is room, the
/// failures' beside it. Both are one sample a second, over the same minutes.
fn sparklines(state: &DashboardState, area: Rect, buf: &mut Buffer) {
    if area.width >= FAILURES_BESIDE_WIDTH {
        let [left, right] = Layout::horizontal([Constraint::Fill(3), Constraint::Fill(2)])
            .spacing(2)
            .areas(area);
        throughput(state, left, buf);
        failures(state, right, buf);
    } else {
        throughput(state, area, buf);
    }
}

fn throughput(state: &DashboardState, area: Rect, buf: &mut Buffer) {
    let peak = state.throughput.iter().copied().max().unwrap_or(0);
    let title = vec![
        " Throughput ".bold(),
        Span::styled(
            format_rate(state.rate),
            Style::new().fg(Color::Green).bold(),
        ),
    ];
    let detail = format!(", peak {peak}/s ");
    spark(area, buf, title, &detail, &state.throughput, Color::Green);
}

/// Failed attempts a second: red while any failed in the window, dim otherwise.
fn failures(state: &DashboardState, area: Rect, buf: &mut Buffer) {
    let total: u64 = state.failures.iter().sum();
    let window = Duration::from_secs(u64::try_from(state.failures.len()).unwrap_or(u64::MAX));
    let style = if total > 0 {
        Style::new().fg(Color::Red).bold()
    } else {
        DIM
    };
    let title = vec![" Failed ".bold(), Span::styled(thousands(total), style)];
    let detail = format!(" in {} ", format_duration(window));
    spark(area, buf, title, &detail, &state.failures, Color::Red);
}

/// A titled sparkline of one-second samples, newest at the right edge; `detail` follows
/// the title where it fits.
fn spark(
    area: Rect,
    buf: &mut Buffer,
    mut title: Vec<Span<'static>>,
    detail: &str,
    samples: &VecDeque<u64>,
    color: Color,
) {
    let full_title = Line::from(title.clone()).width() + detail.len() + 2;
    if full_title <= usize::from(area.width) {
        title.push(Span::styled(detail.to_owned(), LABEL));
    } else {
        title.push(Span::raw(" "));
    }
    let block = rule(Line::from(title), false);
    let inner = block.inner(area);
    block.render(area, buf);
    if samples.is_empty() {
        Paragraph::new(Span::styled("no samples yet", DIM)).render(inner, buf);
        return;
    }
    let peak = samples.iter().copied().max().unwrap_or(0);
    // Newest first, drawn from the right edge, so the newest sample is always visible.
    let data: Vec<u64> = samples
        .iter()
        .rev()
        .take(usize::from(inner.width))
        .copied()
        .collect();
    Sparkline::default()
        .data(&data)
        .max(peak.max(1))
        .direction(RenderDirection::RightToLeft)
        .style(Style::new().fg(color))
        .render(inner, buf);
}

fn footer(state: &DashboardState, area: Rect, buf: &mut Buffer) {
    if area.is_empty() {
        return;
    }
    let mut spans = Vec::new();
    if let Some(stopping) = &state.stopping {
        spans.push(Span::styled(
            " stopping ",
            Style::new().fg(Color::Black).bg(Color::Yellow).bold(),
        ));
        spans.push(Span::styled(
            format!(" {stopping}"),
            Style::new().fg(Color::Yellow),
        ));
    }
    if let Some(flash) = &state.flash {
        if !spans.is_empty() {
            spans.push(Span::styled("  ·  ", DIM));
        }
        spans.push(Span::styled(flash.text.clone(), level_style(flash.level)));
    }
    if spans.is_empty() {
        let hints = hints(state);
        // As many as fit, whole.
        let mut used = 0;
        for (i, (key, what)) in hints.into_iter().enumerate() {
            let gap = if i > 0 { 2 } else { 0 };
            let hint_width = gap + Line::from(key).width() + 1 + what.len();
            if used + hint_width > usize::from(area.width) {
                break;
            }
            used += hint_width;
            spans.push(Span::raw(" ".repeat(gap)));
            spans.push(Span::styled(key, Style::new().fg(FOCUS).bold()));
            spans.push(Span::styled(format!(" {what}"), LABEL));
        }
    }
    Paragraph::new(Line::from(spans)).render(area, buf);
}

/// The footer's key hints: the keys that work everywhere, and those that act on the
/// focused pane's selection (`p` says what it would do to the selected schedule).
fn hints(state: &DashboardState) -> Vec<(&'static str, &'static str)> {
    let select = if state.focus == Pane::Logs {
        "scroll"
    } else {
        "select"
    };
    let mut hints = vec![("q", "quit"), ("Tab", "pane"), ("↑↓", select)];
    hints.extend(panel(state.focus).keys(state));
    hints.push(("?", "keys"));
    hints
}

fn help(area: Rect, buf: &mut Buffer) {
    let key_width = HELP
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let text_width = HELP
        .iter()
        .map(|(_, t)| t.chars().count())
        .max()
        .unwrap_or(0);
    let want_w = u16::try_from(key_width + text_width + 5).unwrap_or(u16::MAX);
    let want_h = u16::try_from(HELP.len() + 2).unwrap_or(u16::MAX);
    let w = want_w.min(area.width);
    let h = want_h.min(area.height);
    let popup = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    Clear.render(popup, buf);
    let block = Block::bordered()
        .border_set(border::THICK)
        .border_style(Style::new().fg(FOCUS))
        .title(Line::from(" Keys ".bold()))
        .title_bottom(Line::from(" ? or Esc closes ").right_aligned());
    let rows = HELP.iter().map(|(key, what)| {
        Row::new([
            Cell::from(Span::styled(*key, Style::new().fg(FOCUS).bold())),
            Cell::from(*what),
        ])
    });
    let key_width = u16::try_from(key_width).unwrap_or(u16::MAX);
    let table = Table::new(rows, [Constraint::Length(key_width), Constraint::Fill(1)])
        .column_spacing(2)
        .block(block);
    Widget::render(table, popup, buf);
}

fn pane(state: &DashboardState, which: Pane, area: Rect, buf: &mut Buffer) {
    if area.is_empty() {
        return;
    }
    panel(which).render(state, area, buf, state.focus == which);
}

/// A state's name where the full ones do not fit.
const fn abbreviation(state: TaskState) -> &'static str {
    match state {
        TaskState::Waiting => "wait",
        TaskState::Scheduled => "sched",
        TaskState::Available => "avail",
        TaskState::Running => "run",
        TaskState::Retryable => "retry",
        TaskState::Completed => "compl",
        TaskState::Discarded => "disc",
        TaskState::Cancelled => "canc",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use std::time::Duration;

    use crate::dashboard::panels::{logs::*, running::*, schedules::*, waiting::*};
    use crate::dashboard::state::Source;

    #[test]
    fn log_sources_are_named_as_before_they_were_typed() {
        let id = castor_abi::Uuid::from_u128(0x0190_f1e2_aa3b_7c4d_8e9f_0a1b_2c3d_4e5f);
        let labels: Vec<Cow<'static, str>> = [
            Source::Worker,
            Source::Library,
            Source::Output,
            Source::Child { pid: 4242 },
            Source::Task {
                task: "send_email".into(),
                id,
            },
        ]
        .iter()
        .map(source_label)
        .collect();
        assert_eq!(
            labels,
            [
                "worker",
                "library",
                "output",
                "child 4242",
                "send_email 2c3d4e5f"
            ]
        );
    }

    #[test]
    fn every_state_has_its_own_colour_and_a_shorter_name() {
        for state in TaskState::ALL {
            let mut others = TaskState::ALL.into_iter().filter(|&s| s != state);
            assert!(
                others.all(|s| state_color(s) != state_color(state)),
                "{state}"
            );
            assert!(abbreviation(state).len() < state.as_str().len(), "{state}");
            assert!(state.as_str().starts_with(abbreviation(state)), "{state}");
        }
    }

    #[test]
    fn numbers_and_rates() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_205_330), "1,205,330");
        assert_eq!(format_rate(0.0), "0.0/s");
        assert_eq!(format_rate(9.94), "9.9/s");
        assert_eq!(format_rate(64.2), "64/s");
    }

    #[test]
    fn cutting_and_wrapping() {
        assert_eq!(fit("send_email", 10), "send_email");
        assert_eq!(fit("send_email", 6), "send_…");
        assert_eq!(fit("send_email", 0), "");
        assert_eq!(fit_left("/a/b/libx.so", 8), "…libx.so");
        assert_eq!(fit_left("/a/b/libx.so", 0), "");
        assert_eq!(fit_database("/var/lib/castor/tasks.db", 12), "…or/tasks.db");
        assert_eq!(
            fit_database("postgres://castor@db.internal/tasks?sslmode=require", 38),
            "postgres://castor@db.internal/tasks?s…"
        );
        assert_eq!(
            wrap("connection refused by peer", 12),
            ["connection ", "refused by ", "peer"]
        );
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 4), [""]);
        assert_eq!(wrap("abc", 0), ["a", "b", "c"]);
    }

    #[test]
    fn schedule_cells_read_naturally() {
        assert_eq!(starts_in(Duration::ZERO), "due");
        assert_eq!(starts_in(Duration::from_millis(4_200)), "in 4.2s");
        let text =
            |line: Line| -> String { line.spans.iter().map(|s| s.content.as_ref()).collect() };
        assert_eq!(text(task_and_name("digest", None, 20)), "digest");
        assert_eq!(
            text(task_and_name("digest", Some("digest"), 20)),
            "digest",
            "a name like the task's is not repeated"
        );
        let line = task_and_name("digest", Some("weekly"), 20);
        assert_eq!(text(line.clone()), "digest (weekly)");
        assert_eq!(line.spans[0].content, "digest");
        assert_eq!(
            text(task_and_name("digest", Some("weekly"), 10)),
            "digest (w…"
        );
        assert_eq!(text(task_and_name("digest", Some("weekly"), 4)), "dig…");
    }

    #[test]
    fn bars_fill_by_eighths() {
        assert_eq!(bar(0, 4), "    ");
        assert_eq!(bar(4, 4), "▌   ");
        assert_eq!(bar(12, 4), "█▌  ");
        assert_eq!(bar(32, 4), "████");
        assert_eq!(bar(99, 4), "████");
    }

    #[test]
    fn narrow_tables_drop_the_least_useful_columns() {
        let cols = [
            col("a", 4, 3),
            grow("b", 4, 1, 9),
            col("c", 4, 1),
            grow("d", 4, 3, 5),
        ];
        // Everything fits: 16 + 3 gaps + 1 for the selection bar = 20; 10 spare cells go
        // 1:3 to the growing columns, the rounding to the first.
        assert_eq!(fit_columns(&cols, 30), [4, 7, 4, 11]);
        assert_eq!(fit_columns(&cols, 20), [4, 4, 4, 4]);
        assert_eq!(fit_columns(&cols, 19), [4, 5, 0, 7]);
        assert_eq!(fit_columns(&cols, 10), [0, 4, 0, 4]);
        assert_eq!(
            fit_columns(&cols, 3),
            [0, 4, 0, 0],
            "one column always stays"
        );
    }
}
