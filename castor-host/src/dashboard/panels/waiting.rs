//! The Waiting panel: tasks waiting for their start time, soonest first, then tasks
//! waiting on their parents, "after" the parent they wait on (not selectable).

use std::time::Duration;

use crate::dashboard::panels::Panel;
use crate::dashboard::state::*;
use crate::dashboard::widgets::*;
use castor_store::format::format_duration;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, HighlightSpacing, Row, StatefulWidget, Table, TableState, Widget};

pub(crate) const WAITING_COLS: [Col; 3] = [
    grow("task", 10, 1, 9),
    col("id", 8, 5),
    // Grows too, for "after <parent>".
    Col {
        weight: 1,
        ..right("starts", 10, 8)
    },
];

/// The tasks waiting for their start time, soonest first, as many as fit; when some do
/// not, the last row says how many.
pub(crate) fn waiting(state: &DashboardState, area: Rect, buf: &mut Buffer) {
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
                Cell::from(
                    Line::from(match &t.after {
                        Some(parent) => fit(&format!("after {parent}"), widths[2]),
                        None => starts_in(t.runs_in),
                    })
                    .right_aligned(),
                ),
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
pub(crate) fn starts_in(d: Duration) -> String {
    if d.is_zero() {
        "due".to_owned()
    } else {
        format!("in {}", format_duration(d))
    }
}

/// See the module doc.
pub struct Waiting;

impl Panel for Waiting {
    fn render(&self, state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
        let len = state.scheduled.len();
        let detail = if len == 0 && area.height == 1 {
            "none".to_owned()
        } else {
            len.to_string()
        };
        let title = pane_title(Pane::Waiting, detail, focused);
        let block = rule(title, focused);
        let inner = block.inner(area);
        block.render(area, buf);
        waiting(state, inner, buf);
    }

    fn collapses(&self) -> bool {
        true
    }

    fn rows(&self, state: &DashboardState) -> usize {
        state.scheduled.len()
    }
}
