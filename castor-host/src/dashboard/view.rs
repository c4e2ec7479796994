//! Draws a [`DashboardState`] into a frame, and nothing else: no clock, no database, no
//! mutation, so the same state always gives the same screen (`view_tests.rs` snapshots
//! it).
//!
//! From 60x15 up, top to bottom: a two-line header; task counts by state beside a
//! throughput sparkline; the six panes; a footer with key hints (those of the focused
//! pane), or the flash message and the stopping notice. The panes go two by two (Running |
//! Recent, Tasks by name | Workers, then Schedules and the log across) on short
//! terminals, and one under the other, each as wide as the screen, from 30 rows up (below
//! 160 columns). Schedules is as tall as its rows within a share of the space, and a
//! single "none" rule when there is nothing scheduled; on a wide pane the tasks waiting
//! for their start time are listed beside the schedules, else under them. Smaller than
//! 60x15, only the header, the counts and the focused pane are drawn (Tab still cycles).
//! Whatever does not fit is cut, never a panic, and narrow tables drop their least useful
//! columns first.
//!
//! The focused pane has a thick, coloured top rule and its selected row a `▶` and a
//! highlight, so focus shows without colour too. Tables page rather than scroll: the
//! window starts at a multiple of its height, so the highlight moves over rows that stay
//! put until it leaves the page. The log wraps its lines and keeps the line the selection
//! points at on its bottom row.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use castor_store::TaskState;
use castor_store::format::format_duration;

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::symbols::border;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, HighlightSpacing, Paragraph, RenderDirection, Row, Sparkline,
    StatefulWidget, Table, TableState, Widget, Wrap,
};

use super::input::HELP;
use super::state::{
    DashboardState, FinishedTask, Level, LogLine, Pane, Phase, RunningTask, ScheduleRow, Source,
    TaskStats, WorkerInfo, short_id, short_task_id,
};

/// Below this width or height only the header, the counts and the focused pane are shown.
const FULL_WIDTH: u16 = 60;
/// See [`FULL_WIDTH`].
const FULL_HEIGHT: u16 = 15;
/// From this height on (and below [`SIDE_BY_SIDE_WIDTH`]) the tables are stacked, each as
/// wide as the terminal.
const STACK_HEIGHT: u16 = 30;
/// From this width on, tables go two by two whatever the height.
const SIDE_BY_SIDE_WIDTH: u16 = 160;
/// From this height on, the focused Recent pane shows the selected attempt's error under
/// its table.
const RECENT_DETAIL_HEIGHT: u16 = 8;
/// From this column width on, progress gets a bar as well as a percentage.
const PROGRESS_BAR_WIDTH: u16 = 18;

const DIM: Style = Style::new().fg(Color::DarkGray);
const LABEL: Style = Style::new().fg(Color::Gray);
const FOCUS: Color = Color::Cyan;

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
    throughput(state, spark_area, buf);
    if area.height >= STACK_HEIGHT && area.width < SIDE_BY_SIDE_WIDTH {
        stacked(state, middle, buf);
    } else {
        side_by_side(state, middle, buf);
    }
    footer(state, footer_area, buf);
}

/// Short terminals: Running beside Recent, Tasks by name beside Workers, Schedules as
/// tall as its rows (up to a quarter of the space, a third when focused), then the log.
fn side_by_side(state: &DashboardState, area: Rect, buf: &mut Buffer) {
    let share = if state.focus == Pane::Schedules { 3 } else { 4 };
    let [top, mid, schedules_area, bottom] = Layout::vertical([
        Constraint::Fill(3),
        Constraint::Fill(2),
        Constraint::Length(schedules_height(state, area.height / share)),
        Constraint::Fill(3),
    ])
    .areas(area);
    let halves = Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)]).spacing(1);
    let [running_area, recent_area] = halves.areas(top);
    let [stats_area, workers_area] = halves.areas(mid);
    pane(state, Pane::Running, running_area, buf);
    pane(state, Pane::Recent, recent_area, buf);
    pane(state, Pane::Stats, stats_area, buf);
    pane(state, Pane::Workers, workers_area, buf);
    pane(state, Pane::Schedules, schedules_area, buf);
    pane(state, Pane::Logs, bottom, buf);
}

/// Tall terminals: each table gets the whole width. Running and the Tasks by name |
/// Workers row are as tall as their rows (up to a quarter of the space each); Schedules
/// too, taking up to a third of what is left (half when focused); Recent and the log
/// share the rest, more of it to the one with the focus.
fn stacked(state: &DashboardState, area: Rect, buf: &mut Buffer) {
    let quarter = area.height / 4;
    let fit = |rows: usize| -> u16 {
        // A title rule, a column header, the rows (or the "empty" line).
        room_u16(rows.max(1) + 2).min(quarter).max(3)
    };
    let running_h = fit(state.running.len());
    let pair_h = fit(state.stats.rows().len().max(state.workers.len()));
    let rest = area.height.saturating_sub(running_h + pair_h);
    let share = if state.focus == Pane::Schedules { 2 } else { 3 };
    let schedules_h = schedules_height(state, rest / share);
    let rest = rest - schedules_h;
    // Recent and the log share the rest; the focused one of them gets two thirds.
    let recent_h = match state.focus {
        // Focused, Recent gets room for the selected attempt's error if the log keeps a
        // rule and two lines.
        Pane::Recent => (rest * 2 / 3).max(RECENT_DETAIL_HEIGHT.min(rest.saturating_sub(3))),
        Pane::Logs => rest / 3,
        _ => rest.div_ceil(2),
    };
    let (running_area, below) = take_top(area, running_h);
    let (recent_area, below) = take_top(below, recent_h);
    let (pair, below) = take_top(below, pair_h);
    let (schedules_area, logs_area) = take_top(below, schedules_h);
    let [stats_area, workers_area] = Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)])
        .spacing(1)
        .areas(pair);
    pane(state, Pane::Running, running_area, buf);
    pane(state, Pane::Recent, recent_area, buf);
    pane(state, Pane::Stats, stats_area, buf);
    pane(state, Pane::Workers, workers_area, buf);
    pane(state, Pane::Schedules, schedules_area, buf);
    pane(state, Pane::Logs, logs_area, buf);
}

/// How tall the Schedules pane is, in at most `cap` rows: a title rule, a column header
/// and a row per schedule or waiting task (the longer list of the two, as they are side
/// by side on a full-width pane). Just the rule, which gives the count, when both lists
/// are empty (it then says so) or `cap` has no room for a row.
fn schedules_height(state: &DashboardState, cap: u16) -> u16 {
    let rows = state.schedules.len().max(state.scheduled.len());
    if rows == 0 || cap < 3 {
        1
    } else {
        room_u16(rows + 2).min(cap)
    }
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

/// `(the top rows of area, the rest)`; fewer rows if `area` has fewer.
fn take_top(area: Rect, rows: u16) -> (Rect, Rect) {
    let rows = rows.min(area.height);
    let top = Rect {
        height: rows,
        ..area
    };
    let rest = Rect {
        y: area.y + rows,
        height: area.height - rows,
        ..area
    };
    (top, rest)
}

/// `(the bottom rows of area, the rest)`; fewer rows if `area` has fewer.
fn take_bottom(area: Rect, rows: u16) -> (Rect, Rect) {
    let rows = rows.min(area.height);
    let rest = Rect {
        height: area.height - rows,
        ..area
    };
    let bottom = Rect {
        y: area.y + area.height - rows,
        height: rows,
        ..area
    };
    (bottom, rest)
}

// ---------------------------------------------------------------------------------------
// Header, counts, throughput, footer

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
        let block = rule(Line::from(" Tasks by state ".bold()), false);
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

fn throughput(state: &DashboardState, area: Rect, buf: &mut Buffer) {
    let peak = state.throughput.iter().copied().max().unwrap_or(0);
    let peak_text = format!(", peak {peak}/s ");
    let mut title = vec![
        " Throughput ".bold(),
        Span::styled(
            format_rate(state.rate),
            Style::new().fg(Color::Green).bold(),
        ),
    ];
    let full_title = Line::from(title.clone()).width() + peak_text.len() + 2;
    if full_title <= usize::from(area.width) {
        title.push(Span::styled(peak_text, LABEL));
    } else {
        title.push(Span::raw(" "));
    }
    let title = Line::from(title);
    let block = rule(title, false);
    let inner = block.inner(area);
    block.render(area, buf);
    if state.throughput.is_empty() {
        Paragraph::new(Span::styled("no samples yet", DIM)).render(inner, buf);
        return;
    }
    // Newest first, drawn from the right edge, so the newest sample is always visible.
    let data: Vec<u64> = state
        .throughput
        .iter()
        .rev()
        .take(usize::from(inner.width))
        .copied()
        .collect();
    Sparkline::default()
        .data(&data)
        .max(peak.max(1))
        .direction(RenderDirection::RightToLeft)
        .style(Style::new().fg(Color::Green))
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
    match state.focus {
        Pane::Running => hints.push(("c", "cancel")),
        Pane::Recent => hints.extend([("r", "retry"), ("c", "cancel")]),
        Pane::Schedules => {
            let pause = if state.selected_schedule().is_some_and(|s| s.paused) {
                "resume"
            } else {
                "pause"
            };
            hints.extend([("p", pause), ("x", "remove")]);
        }
        Pane::Stats | Pane::Workers | Pane::Logs => {}
    }
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

// ---------------------------------------------------------------------------------------
// Panes

fn pane(state: &DashboardState, which: Pane, area: Rect, buf: &mut Buffer) {
    if area.is_empty() {
        return;
    }
    let focused = state.focus == which;
    match which {
        Pane::Running => running(state, area, buf, focused),
        Pane::Recent => recent(state, area, buf, focused),
        Pane::Stats => stats(state, area, buf, focused),
        Pane::Workers => workers(state, area, buf, focused),
        Pane::Schedules => schedules(state, area, buf, focused),
        Pane::Logs => logs(state, area, buf, focused),
    }
}

/// The dim line an empty pane shows, where its first row would start.
fn placeholder(text: &str, area: Rect, buf: &mut Buffer) {
    Paragraph::new(Span::styled(format!(" {text}"), DIM)).render(area, buf);
}

/// A pane's frame: a top rule carrying the title, thick and coloured when focused.
fn rule(title: Line<'_>, focused: bool) -> Block<'_> {
    let (style, set) = rule_styles(focused);
    Block::new()
        .borders(Borders::TOP)
        .border_set(set)
        .border_style(style)
        .title(title)
}

fn pane_title(which: Pane, detail: String, focused: bool) -> Line<'static> {
    let name_style = if focused {
        Style::new().fg(FOCUS).bold()
    } else {
        Style::new().bold()
    };
    Line::from(vec![
        Span::raw(" "),
        Span::styled(which.title(), name_style),
        Span::styled(format!(" {detail} "), LABEL),
    ])
}

/// A pane rule's style and line set: thick and coloured when focused, else plain and dim.
fn rule_styles(focused: bool) -> (Style, border::Set<'static>) {
    if focused {
        (Style::new().fg(FOCUS).bold(), border::THICK)
    } else {
        (DIM, border::PLAIN)
    }
}

/// "3" or "12/200": the row count, and the selected row when focused.
fn position(len: usize, selected: usize, focused: bool) -> String {
    if focused && len > 1 {
        format!("{}/{}", selected + 1, len)
    } else {
        len.to_string()
    }
}

/// A table column: `min` cells wide, taking `weight` shares of the spare width; `keep`
/// ranks which columns stay when the pane is too narrow for all of them (highest stays
/// longest).
#[derive(Clone, Copy)]
struct Col {
    title: &'static str,
    min: u16,
    weight: u16,
    keep: u8,
    right: bool,
}

const fn col(title: &'static str, min: u16, keep: u8) -> Col {
    Col {
        title,
        min,
        weight: 0,
        keep,
        right: false,
    }
}

const fn grow(title: &'static str, min: u16, weight: u16, keep: u8) -> Col {
    Col {
        weight,
        ..col(title, min, keep)
    }
}

const fn right(title: &'static str, min: u16, keep: u8) -> Col {
    Col {
        right: true,
        ..col(title, min, keep)
    }
}

/// The width of each column in `width` cells (one of them for the selection bar), 0 for
/// the columns dropped to make the rest fit.
fn fit_columns(cols: &[Col], width: u16) -> Vec<u16> {
    let room = usize::from(width.saturating_sub(1));
    let mut kept: Vec<bool> = vec![true; cols.len()];
    let needed = |kept: &[bool]| -> usize {
        let shown = cols.iter().zip(kept).filter(|(_, k)| **k);
        let (n, sum) = shown.fold((0usize, 0usize), |(n, sum), (c, _)| {
            (n + 1, sum + usize::from(c.min))
        });
        sum + n.saturating_sub(1)
    };
    while needed(&kept) > room && kept.iter().filter(|k| **k).count() > 1 {
        let drop = (0..cols.len())
            .filter(|&i| kept[i])
            .min_by_key(|&i| cols[i].keep);
        match drop {
            Some(i) => kept[i] = false,
            None => break,
        }
    }
    let spare = room.saturating_sub(needed(&kept));
    let growers: Vec<usize> = (0..cols.len())
        .filter(|&i| kept[i] && cols[i].weight > 0)
        .collect();
    let weights: usize = growers.iter().map(|&i| usize::from(cols[i].weight)).sum();
    let mut widths: Vec<usize> = (0..cols.len())
        .map(|i| if kept[i] { usize::from(cols[i].min) } else { 0 })
        .collect();
    let mut given = 0;
    for &i in &growers {
        let share = spare * usize::from(cols[i].weight) / weights;
        widths[i] += share;
        given += share;
    }
    // What rounding left goes to the first growing column.
    if let Some(&first) = growers.first() {
        widths[first] += spare - given;
    }
    widths
        .into_iter()
        .map(|w| u16::try_from(w).unwrap_or(u16::MAX))
        .collect()
}

/// What a table pane draws: its columns, its rows by index, and where the user is.
struct TableView<'a, F> {
    which: Pane,
    cols: &'a [Col],
    len: usize,
    selected: usize,
    /// Said in the title after the row count (`· 3 waiting for a slot`), if anything.
    note: Option<String>,
    empty: &'a str,
    cells: F,
}

/// Draws a table pane, leaving its last `detail` rows to the caller (`recent`'s error).
fn table<F>(area: Rect, buf: &mut Buffer, focused: bool, view: TableView<'_, F>, detail: u16)
where
    F: Fn(usize, &[u16]) -> Vec<Cell<'static>>,
{
    let mut count = position(view.len, view.selected, focused);
    if let Some(note) = &view.note {
        count = format!("{count} · {note}");
    }
    let title = pane_title(view.which, count, focused);
    let block = rule(title, focused);
    let inner = block.inner(area);
    block.render(area, buf);
    let (table_area, _) = take_top(inner, inner.height.saturating_sub(detail));
    table_rows(table_area, buf, focused, &view);
}

/// The column titles of the columns `shown`, aligned as their cells are.
fn header_row(cols: &[Col], shown: &[usize]) -> Row<'static> {
    Row::new(shown.iter().map(|&i| {
        let c = cols[i];
        let text = if c.right {
            Line::from(c.title).right_aligned()
        } else {
            Line::from(c.title)
        };
        Cell::from(text)
    }))
    .style(LABEL)
}

/// A table's column header and the page of rows holding the selection (highlighted when
/// `focused`), or the view's `empty` line: a table pane without its rule.
fn table_rows<F>(table_area: Rect, buf: &mut Buffer, focused: bool, view: &TableView<'_, F>)
where
    F: Fn(usize, &[u16]) -> Vec<Cell<'static>>,
{
    if view.len == 0 {
        placeholder(view.empty, table_area, buf);
        return;
    }
    let widths = fit_columns(view.cols, table_area.width);
    let shown: Vec<usize> = (0..view.cols.len()).filter(|&i| widths[i] > 0).collect();
    let header = header_row(view.cols, &shown);
    let page = usize::from(table_area.height.saturating_sub(1)).max(1);
    let selected = view.selected.min(view.len - 1);
    let start = selected / page * page;
    let end = (start + page).min(view.len);
    let rows = (start..end).map(|index| {
        let mut cells = (view.cells)(index, &widths);
        let picked: Vec<Cell> = shown
            .iter()
            .filter_map(|&i| cells.get_mut(i).map(std::mem::take))
            .collect();
        Row::new(picked)
    });
    let constraints = shown.iter().map(|&i| Constraint::Length(widths[i]));
    let table = Table::new(rows, constraints)
        .header(header)
        .column_spacing(1)
        .highlight_symbol(Span::styled("▶", Style::new().fg(FOCUS)))
        .highlight_spacing(HighlightSpacing::Always)
        .row_highlight_style(
            Style::new()
                .bg(Color::DarkGray)
                .add_modifier(Modifier::BOLD),
        );
    let mut table_state = TableState::default();
    if focused {
        table_state.select(Some(selected - start));
    }
    StatefulWidget::render(table, table_area, buf, &mut table_state);
}

const RUNNING_COLS: [Col; 6] = [
    col("id", 8, 6),
    grow("task", 10, 2, 9),
    col("mode", 7, 3),
    right("try", 5, 5),
    right("elapsed", 7, 8),
    grow("progress", 8, 3, 7),
];

fn running(state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
    let view = TableView {
        which: Pane::Running,
        cols: &RUNNING_COLS,
        len: state.running.len(),
        selected: state.selected_row(Pane::Running),
        note: waiting_note(state),
        empty: "no task running",
        cells: |i: usize, widths: &[u16]| {
            state
                .running
                .get(i)
                .map(|t| running_cells(t, widths))
                .unwrap_or_default()
        },
    };
    table(area, buf, focused, view, 0);
}

/// How many of the listed attempts wait for a slot, for the Running pane's title.
fn waiting_note(state: &DashboardState) -> Option<String> {
    let waiting = state.running.len() - state.running_count();
    (waiting > 0).then(|| format!("{waiting} waiting for a slot"))
}

fn running_cells(t: &RunningTask, widths: &[u16]) -> Vec<Cell<'static>> {
    if t.phase == Phase::Waiting {
        // Claimed but not begun: no time runs, and nothing claims it does.
        return vec![
            Cell::from(Span::styled(short_task_id(t.id), DIM)),
            Cell::from(Span::styled(fit(&t.task, widths[1]), DIM)),
            Cell::from(Span::styled(t.mode.as_str(), DIM)),
            Cell::from(Line::from(attempts(t.attempt, t.max_attempts)).right_aligned()),
            Cell::from(Line::from(Span::styled("waiting", DIM)).right_aligned()),
            Cell::from(Span::styled("-", DIM)),
        ];
    }
    let progress_width = widths.get(5).copied().unwrap_or(0);
    vec![
        Cell::from(Span::styled(short_task_id(t.id), DIM)),
        Cell::from(fit(&t.task, widths[1])),
        Cell::from(Span::styled(t.mode.as_str(), LABEL)),
        Cell::from(Line::from(attempts(t.attempt, t.max_attempts)).right_aligned()),
        Cell::from(Line::from(format_duration(t.elapsed)).right_aligned()),
        Cell::from(progress(t, progress_width)),
    ]
}

/// `█████▌    45% resizing`, or `45%` when narrow, or `1,234 done` without a total.
fn progress(t: &RunningTask, width: u16) -> Line<'static> {
    let Some(p) = &t.progress else {
        return Line::from(Span::styled("-", DIM));
    };
    let mut spans = Vec::new();
    let mut used = 0usize;
    if p.total > 0 {
        let done = p.done.min(p.total);
        // u128: done * 800 cannot overflow for any u64.
        let eighths = u128::from(done) * 80 / u128::from(p.total);
        let percent = u128::from(done) * 100 / u128::from(p.total);
        if width >= PROGRESS_BAR_WIDTH {
            let bar = bar(usize::try_from(eighths).unwrap_or(80), 10);
            spans.push(Span::styled(bar, Style::new().fg(Color::Green)));
            spans.push(Span::raw(" "));
            used += 11;
        }
        let percent = format!("{percent:>3}%");
        used += percent.len();
        spans.push(Span::raw(percent));
    } else {
        let done = format!("{} done", thousands(p.done));
        used += done.len();
        spans.push(Span::raw(done));
    }
    if let Some(message) = &p.message {
        let room = usize::from(width).saturating_sub(used + 1);
        if room >= 3 {
            spans.push(Span::raw(" "));
            spans.push(Span::styled(fit(message, room_u16(room)), LABEL));
        }
    }
    Line::from(spans)
}

/// A bar `cells` wide, filled to `eighths` eighths of a cell.
fn bar(eighths: usize, cells: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = eighths.min(cells * 8);
    let full = eighths / 8;
    let mut s = "█".repeat(full);
    if full < cells {
        s.push(PARTS[eighths % 8]);
        s.push_str(&" ".repeat(cells - full - 1));
    }
    s
}

/// The id outranks everything but the state and the name: `r` and `c` act on the selected
/// row, and the id is how the log names it. At 80 columns (a pane of about 38) the
/// columns left are state, id, task and took; the selected attempt's error shows below
/// the table when the pane has the focus and the room.
const RECENT_COLS: [Col; 7] = [
    col("at", 8, 3),
    col("state", 9, 9),
    col("id", 8, 7),
    grow("task", 10, 1, 8),
    right("try", 5, 4),
    right("took", 7, 6),
    grow("error", 10, 3, 5),
];

fn recent(state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
    // The focused pane shows the selected attempt's whole error under the table, where
    // the table has room to spare for it.
    let selected_error = state
        .selected_recent()
        .and_then(|t| t.error.as_deref())
        .filter(|_| focused && area.height >= RECENT_DETAIL_HEIGHT);
    let detail = selected_error.map_or(0, |_| (area.height / 3).clamp(3, 6));
    let view = TableView {
        which: Pane::Recent,
        cols: &RECENT_COLS,
        len: state.recent.len(),
        selected: state.selected_row(Pane::Recent),
        note: None,
        empty: "no task finished yet",
        cells: |i: usize, widths: &[u16]| {
            state
                .recent
                .get(i)
                .map(|t| recent_cells(t, widths))
                .unwrap_or_default()
        },
    };
    table(area, buf, focused, view, detail);
    if let (Some(error), Some(task)) = (selected_error, state.selected_recent()) {
        let (detail_area, _) = take_bottom(area, detail);
        let title = Line::from(vec![
            Span::styled(" error of ", LABEL),
            Span::raw(format!("{} {} ", task.task, short_task_id(task.id))),
        ]);
        let block = Block::new()
            .borders(Borders::TOP)
            .border_set(border::PLAIN)
            .border_style(DIM)
            .title(title);
        Paragraph::new(error.to_owned())
            .style(Style::new().fg(state_color(task.state)))
            .wrap(Wrap { trim: false })
            .block(block)
            .render(detail_area, buf);
    }
}

fn recent_cells(t: &FinishedTask, widths: &[u16]) -> Vec<Cell<'static>> {
    let error = t.error.as_deref().map_or_else(String::new, |e| {
        let mut lines = e.lines();
        let first = lines.next().unwrap_or_default();
        // A cut error says so: a "…" at the end, a "⏎" for more lines.
        if lines.next().is_some() {
            fit(&format!("{first} ⏎"), widths[6])
        } else {
            fit(first, widths[6])
        }
    });
    vec![
        Cell::from(Span::styled(t.at.clone(), DIM)),
        Cell::from(Span::styled(t.state.as_str(), state_style(t.state))),
        Cell::from(Span::styled(short_task_id(t.id), DIM)),
        Cell::from(fit(&t.task, widths[3])),
        Cell::from(Line::from(attempts(t.attempt, t.max_attempts)).right_aligned()),
        Cell::from(Line::from(format_duration(t.duration)).right_aligned()),
        Cell::from(Span::styled(error, Style::new().fg(state_color(t.state)))),
    ]
}

const STATS_COLS: [Col; 5] = [
    grow("task", 10, 1, 9),
    right("count", 6, 8),
    right("failed", 6, 7),
    right("mean", 7, 5),
    right("p95", 7, 6),
];

fn stats(state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
    let rows = state.stats.rows();
    let view = TableView {
        which: Pane::Stats,
        cols: &STATS_COLS,
        len: rows.len(),
        selected: state.selection.stats,
        note: None,
        empty: "no task finished yet",
        cells: |i: usize, widths: &[u16]| {
            rows.get(i)
                .map(|r| stats_cells(r, widths))
                .unwrap_or_default()
        },
    };
    table(area, buf, focused, view, 0);
}

fn stats_cells(r: &TaskStats, widths: &[u16]) -> Vec<Cell<'static>> {
    let failed_style = if r.failures > 0 {
        Style::new().fg(Color::Red)
    } else {
        DIM
    };
    vec![
        Cell::from(fit(&r.task, widths[0])),
        Cell::from(Line::from(thousands(r.count)).right_aligned()),
        Cell::from(Line::from(Span::styled(thousands(r.failures), failed_style)).right_aligned()),
        Cell::from(Line::from(format_duration(r.mean)).right_aligned()),
        Cell::from(Line::from(format_duration(r.p95)).right_aligned()),
    ]
}

const WORKER_COLS: [Col; 8] = [
    col("id", 8, 9),
    grow("host", 8, 2, 6),
    right("pid", 7, 3),
    grow("manager", 7, 1, 2),
    right("heartbeat", 11, 7),
    right("done", 6, 5),
    right("failed", 6, 4),
    col("status", 6, 8),
];

fn workers(state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
    let this = state.header.worker_id.as_str();
    let view = TableView {
        which: Pane::Workers,
        cols: &WORKER_COLS,
        len: state.workers.len(),
        selected: state.selection.workers,
        note: None,
        empty: "no worker registered",
        cells: |i: usize, widths: &[u16]| {
            state
                .workers
                .get(i)
                .map(|w| worker_cells(w, w.id == this, widths))
                .unwrap_or_default()
        },
    };
    table(area, buf, focused, view, 0);
}

fn worker_cells(w: &WorkerInfo, this: bool, widths: &[u16]) -> Vec<Cell<'static>> {
    let (status, style) = match (this, w.alive) {
        (true, _) => ("this", Style::new().fg(FOCUS)),
        (false, true) => ("alive", Style::new().fg(Color::Green)),
        (false, false) => ("stale", Style::new().fg(Color::Red)),
    };
    let failed_style = if w.failed > 0 {
        Style::new().fg(Color::Red)
    } else {
        DIM
    };
    vec![
        Cell::from(short_id(&w.id).to_owned()),
        Cell::from(fit(&w.hostname, widths[1])),
        Cell::from(Line::from(w.pid.to_string()).right_aligned()),
        Cell::from(fit(&w.manager, widths[3])),
        Cell::from(
            Line::from(format!("{} ago", format_duration(w.last_heartbeat_ago))).right_aligned(),
        ),
        Cell::from(Line::from(thousands(w.completed)).right_aligned()),
        Cell::from(Line::from(Span::styled(thousands(w.failed), failed_style)).right_aligned()),
        Cell::from(Span::styled(status, style)),
    ]
}

const SCHEDULE_COLS: [Col; 5] = [
    right("id", 4, 6),
    grow("task", 10, 3, 9),
    grow("cadence", 10, 2, 7),
    right("runs", 6, 5),
    right("next run", 10, 8),
];

const WAITING_COLS: [Col; 3] = [
    grow("task", 10, 1, 9),
    col("id", 8, 5),
    right("starts", 10, 8),
];

/// From this inner width on, the waiting tasks go beside the schedules rather than under
/// them: the schedules' columns and the waiting tasks' names and start times fit whole,
/// with the separator and the gap.
const WAITING_BESIDE_WIDTH: u16 = 70;

/// Schedules, and beside them (on a wide pane) or under them the tasks waiting for their
/// start time. Only the schedules take a selection; the waiting tasks are for looking at.
fn schedules(state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
    let len = state.schedules.len();
    let empty = len == 0 && state.scheduled.is_empty();
    // Empty, the pane is just its rule (see `schedules_height`), so the title says it.
    let detail = if empty && area.height == 1 {
        "none".to_owned()
    } else {
        position(len, state.selection.schedules, focused)
    };
    let block = rule(pane_title(Pane::Schedules, detail, focused), focused);
    let inner = block.inner(area);
    block.render(area, buf);
    if empty {
        placeholder("no schedules", inner, buf);
        return;
    }
    let view = TableView {
        which: Pane::Schedules,
        cols: &SCHEDULE_COLS,
        len,
        selected: state.selection.schedules,
        note: None,
        empty: "no schedules",
        cells: |i: usize, widths: &[u16]| {
            state
                .schedules
                .get(i)
                .map(|s| schedule_cells(s, widths))
                .unwrap_or_default()
        },
    };
    let waiting_title = Line::from(Span::styled(
        format!(" waiting to start {} ", state.scheduled.len()),
        LABEL,
    ));
    if inner.width >= WAITING_BESIDE_WIDTH {
        // The waiting tasks' ids come and go with the width: 24 cells hold the names and
        // start times, 32 the ids too.
        let waiting_width = (inner.width * 3 / 10).clamp(24, 48);
        let [left, right] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(waiting_width)])
                .spacing(1)
                .areas(inner);
        table_rows(left, buf, focused, &view);
        // The waiting list's title sits on the pane's rule, over a separator joined to it.
        let junction = if focused { "┯" } else { "┬" };
        let (rule_style, _) = rule_styles(focused);
        buf.set_string(right.x, area.y, junction, rule_style);
        let title_area = Rect {
            x: right.x + 1,
            y: area.y,
            width: right.width.saturating_sub(1),
            height: 1,
        };
        Paragraph::new(waiting_title).render(title_area, buf);
        let separator = Block::new().borders(Borders::LEFT).border_style(DIM);
        let list_area = separator.inner(right);
        separator.render(right, buf);
        waiting(state, list_area, buf);
        return;
    }
    // Narrow: the waiting tasks under the schedules, if there are any and there is room
    // for a title, a column header and one of them; the schedules come first.
    let schedules_need = room_u16(len.max(1) + 1);
    let waiting_need = room_u16(state.scheduled.len() + 2);
    let mut schedules_h = inner
        .height
        .saturating_sub(waiting_need)
        .max(inner.height / 2)
        .min(schedules_need);
    if state.scheduled.is_empty() || inner.height - schedules_h < 3 {
        schedules_h = inner.height;
    }
    let (schedules_area, below) = take_top(inner, schedules_h);
    table_rows(schedules_area, buf, focused, &view);
    if !below.is_empty() {
        let sub = Block::new()
            .borders(Borders::TOP)
            .border_set(border::PLAIN)
            .border_style(DIM)
            .title(waiting_title);
        let list_area = sub.inner(below);
        sub.render(below, buf);
        waiting(state, list_area, buf);
    }
}

fn schedule_cells(s: &ScheduleRow, widths: &[u16]) -> Vec<Cell<'static>> {
    let runs = match s.times {
        Some(times) => format!("{}/{times}", s.runs),
        None => s.runs.to_string(),
    };
    let (next, next_style) = match s.next_run_in {
        _ if s.paused => ("paused".to_owned(), Style::new().fg(Color::Yellow)),
        None => ("finished".to_owned(), DIM),
        Some(in_) => (starts_in(in_), Style::new()),
    };
    vec![
        Cell::from(Line::from(Span::styled(s.id.to_string(), LABEL)).right_aligned()),
        Cell::from(task_and_name(&s.task, s.name.as_deref(), widths[1])),
        Cell::from(fit(&s.cadence, widths[2])),
        Cell::from(Line::from(runs).right_aligned()),
        Cell::from(Line::from(Span::styled(next, next_style)).right_aligned()),
    ]
}

/// `send_digest (weekly_digest)`: the task, then the periodic task's name if it has one
/// other than the task's, dimmed; cut to `width` as a whole.
fn task_and_name(task: &str, name: Option<&str>, width: u16) -> Line<'static> {
    let Some(name) = name.filter(|n| *n != task) else {
        return Line::from(fit(task, width));
    };
    let whole = fit(&format!("{task} ({name})"), width);
    let split = whole
        .char_indices()
        .nth(task.chars().count())
        .map_or(whole.len(), |(i, _)| i);
    let (first, rest) = whole.split_at(split);
    Line::from(vec![
        Span::raw(first.to_owned()),
        Span::styled(rest.to_owned(), DIM),
    ])
}

/// The tasks waiting for their start time, soonest first, as many as fit; when some do
/// not, the last row says how many.
fn waiting(state: &DashboardState, area: Rect, buf: &mut Buffer) {
    let tasks = &state.scheduled;
    if tasks.is_empty() {
        placeholder("no task waiting", area, buf);
        return;
    }
    let widths = fit_columns(&WAITING_COLS, area.width);
    let shown: Vec<usize> = (0..WAITING_COLS.len()).filter(|&i| widths[i] > 0).collect();
    let room = usize::from(area.height.saturating_sub(1));
    let (listed, more) = if tasks.len() > room && room > 1 {
        let listed = room.saturating_sub(1);
        (listed, tasks.len() - listed)
    } else {
        (tasks.len(), 0)
    };
    let mut rows: Vec<Row> = tasks
        .iter()
        .take(listed)
        .map(|t| {
            let mut cells = [
                Cell::from(fit(&t.task, widths[0])),
                Cell::from(Span::styled(short_task_id(t.id), DIM)),
                Cell::from(Line::from(starts_in(t.runs_in)).right_aligned()),
            ];
            Row::new(
                shown
                    .iter()
                    .filter_map(|&i| cells.get_mut(i).map(std::mem::take)),
            )
        })
        .collect();
    if more > 0 {
        rows.push(Row::new([Cell::from(Span::styled(
            format!("… {more} more"),
            DIM,
        ))]));
    }
    let constraints = shown.iter().map(|&i| Constraint::Length(widths[i]));
    // The same blank first column as the schedules' selection bar, so the two line up.
    let table = Table::new(rows, constraints)
        .header(header_row(&WAITING_COLS, &shown))
        .column_spacing(1)
        .highlight_symbol(" ")
        .highlight_spacing(HighlightSpacing::Always);
    StatefulWidget::render(table, area, buf, &mut TableState::default());
}

/// `in 4.2s`, or `due` once the time has come.
fn starts_in(d: Duration) -> String {
    if d.is_zero() {
        "due".to_owned()
    } else {
        format!("in {}", format_duration(d))
    }
}

/// The log, wrapped to the pane's width. Following (`log_back` 0), the newest line is at
/// the bottom; scrolled back, the line `log_back` lines up from the newest is, unless that
/// leaves the pane part empty at the top of the log.
fn logs(state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
    let len = state.logs.len();
    let back = state.selection.log_back.min(len.saturating_sub(1));
    let total = thousands(len as u64);
    let detail = if back == 0 {
        format!("{total} lines, following")
    } else {
        format!(
            "up to line {} of {total} · End follows",
            thousands((len - back) as u64)
        )
    };
    let block = rule(pane_title(Pane::Logs, detail, focused), focused);
    let inner = block.inner(area);
    block.render(area, buf);
    if len == 0 {
        placeholder("nothing logged yet", inner, buf);
        return;
    }
    let height = usize::from(inner.height);
    let end = len - back;
    let source_width = state
        .logs
        .range(end.saturating_sub(height)..end)
        .map(|l| source_label(&l.source).chars().count())
        .max()
        .unwrap_or(0)
        .min(usize::from(inner.width / 4));
    // "HH:MM:SS " + "level " + source + " ".
    let indent = 9 + 6 + source_width + 1;
    let text_width = usize::from(inner.width).saturating_sub(indent);
    let mut rows: VecDeque<Line> = VecDeque::with_capacity(height);
    for line in state.logs.range(..end).rev() {
        if rows.len() >= height {
            break;
        }
        for row in log_rows(line, source_width, text_width, height)
            .into_iter()
            .rev()
        {
            rows.push_front(row);
        }
    }
    while rows.len() > height {
        rows.pop_front();
    }
    for line in state.logs.range(end..) {
        if rows.len() >= height {
            break;
        }
        rows.extend(log_rows(line, source_width, text_width, height));
    }
    rows.truncate(height);
    Paragraph::new(Vec::from(rows)).render(inner, buf);
}

/// One log line as screen rows: time, level, source and the text's first `text_width`
/// characters, then the rest of the text under it (at most `max_rows` rows in all).
fn log_rows(
    l: &LogLine,
    source_width: usize,
    text_width: usize,
    max_rows: usize,
) -> Vec<Line<'static>> {
    let text_style = match l.level {
        Level::Error => Style::new().fg(Color::LightRed),
        Level::Warn => Style::new().fg(Color::Yellow),
        Level::Debug => DIM,
        Level::Info | Level::Output => Style::new(),
    };
    let source = fit(&source_label(&l.source), room_u16(source_width));
    // Too narrow to wrap usefully: one row, cut at the edge.
    let mut pieces = if text_width < 12 {
        vec![l.text.clone()]
    } else {
        wrap(&l.text, text_width)
    }
    .into_iter();
    let first = pieces.next().unwrap_or_default();
    let mut rows = vec![Line::from(vec![
        Span::styled(format!("{} ", l.at), DIM),
        Span::styled(format!("{:<5} ", l.level.as_str()), level_style(l.level)),
        Span::styled(format!("{source:<source_width$} "), LABEL),
        Span::styled(first, text_style),
    ])];
    let indent = " ".repeat(9 + 6 + source_width + 1);
    for piece in pieces.take(max_rows.saturating_sub(1)) {
        rows.push(Line::from(vec![
            Span::raw(indent.clone()),
            Span::styled(piece, text_style),
        ]));
    }
    rows
}

// ---------------------------------------------------------------------------------------
// Formatting

/// Who a log line is from, as the log pane names it: `worker`, `library`, `output`,
/// `child 4242`, or a task's name and short id (`send_email 2c3d4e5f`).
fn source_label(source: &Source) -> Cow<'static, str> {
    match source {
        Source::Worker => Cow::Borrowed("worker"),
        Source::Library => Cow::Borrowed("library"),
        Source::Output => Cow::Borrowed("output"),
        Source::Child { pid } => Cow::Owned(format!("child {pid}")),
        Source::Task { task, id } => Cow::Owned(format!("{task} {}", short_task_id(*id))),
    }
}

fn state_color(state: TaskState) -> Color {
    match state {
        TaskState::Scheduled => Color::Blue,
        TaskState::Available => Color::Cyan,
        TaskState::Running => Color::Yellow,
        TaskState::Retryable => Color::Magenta,
        TaskState::Completed => Color::Green,
        TaskState::Discarded => Color::Red,
        TaskState::Cancelled => Color::Gray,
    }
}

fn state_style(state: TaskState) -> Style {
    Style::new().fg(state_color(state))
}

/// A state's name where the full ones do not fit.
const fn abbreviation(state: TaskState) -> &'static str {
    match state {
        TaskState::Scheduled => "sched",
        TaskState::Available => "avail",
        TaskState::Running => "run",
        TaskState::Retryable => "retry",
        TaskState::Completed => "compl",
        TaskState::Discarded => "disc",
        TaskState::Cancelled => "canc",
    }
}

fn level_style(level: Level) -> Style {
    match level {
        Level::Error => Style::new().fg(Color::Red).bold(),
        Level::Warn => Style::new().fg(Color::Yellow),
        Level::Info => Style::new().fg(Color::Green),
        Level::Debug => DIM,
        Level::Output => Style::new().fg(Color::Blue),
    }
}

fn attempts(attempt: u32, max: u32) -> String {
    format!("{attempt}/{max}")
}

/// `0.4/s`, `42/s`.
fn format_rate(rate: f64) -> String {
    if rate < 10.0 {
        format!("{rate:.1}/s")
    } else {
        format!("{rate:.0}/s")
    }
}

/// `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn room_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// `text` in rows of at most `width` characters (`width` > 0), broken after a space where
/// one is in the row's second half, else anywhere. Characters, not cells, as in [`fit`].
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let chars: Vec<char> = text.chars().collect();
    let mut rows = Vec::new();
    let mut start = 0;
    while chars.len() - start > width {
        let window = &chars[start..start + width];
        let cut = match window.iter().rposition(|c| *c == ' ') {
            Some(space) if space >= width / 2 => space + 1,
            _ => width,
        };
        rows.push(window[..cut].iter().collect());
        start += cut;
    }
    rows.push(chars[start..].iter().collect());
    rows
}

/// `text` in at most `width` characters, ending in `…` if cut. Characters, not cells:
/// wide characters may still be cut by the buffer, which is harmless.
fn fit(text: &str, width: u16) -> String {
    let width = usize::from(width);
    if text.chars().count() <= width {
        return text.to_owned();
    }
    match width {
        0 => String::new(),
        _ => text.chars().take(width - 1).chain(['…']).collect(),
    }
}

/// The header's database in at most `width` characters: a SQLite path cut at the left
/// (its file name matters most), a URL (`postgres://host/db?options`) at the right, so
/// that what is kept says which engine, server and database, not only the options that
/// end it.
fn fit_database(text: &str, width: usize) -> String {
    if text.contains("://") {
        fit(text, u16::try_from(width).unwrap_or(u16::MAX))
    } else {
        fit_left(text, width)
    }
}

/// `text` in at most `width` characters, starting with `…` if cut: for paths.
fn fit_left(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_owned();
    }
    match width {
        0 => String::new(),
        _ => ['…']
            .into_iter()
            .chain(text.chars().skip(count - (width - 1)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
