//! The Log panel: the worker's, the library's and the tasks' lines, wrapped, following
//! the newest unless scrolled back.

use std::borrow::Cow;
use std::collections::VecDeque;

use crate::dashboard::panels::Panel;
use crate::dashboard::state::*;
use crate::dashboard::widgets::*;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget};

/// The log, wrapped to the pane's width. Following (`log_back` 0), the newest line is at
/// the bottom; scrolled back, the line `log_back` lines up from the newest is, unless that
/// leaves the pane part empty at the top of the log.
pub(crate) fn logs(state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
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
pub(crate) fn log_rows(
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

/// Who a log line is from, as the log pane names it: `worker`, `library`, `output`,
/// `child 4242`, or a task's name and short id (`send_email 2c3d4e5f`).
pub(crate) fn source_label(source: &Source) -> Cow<'static, str> {
    match source {
        Source::Worker => Cow::Borrowed("worker"),
        Source::Library => Cow::Borrowed("library"),
        Source::Output => Cow::Borrowed("output"),
        Source::Child { pid } => Cow::Owned(format!("child {pid}")),
        Source::Task { task, id } => Cow::Owned(format!("{task} {}", short_task_id(*id))),
    }
}

/// See the module doc.
pub struct Logs;

impl Panel for Logs {
    fn render(&self, state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
        logs(state, area, buf, focused);
    }

    fn rows(&self, state: &DashboardState) -> usize {
        state.logs.len()
    }
}
