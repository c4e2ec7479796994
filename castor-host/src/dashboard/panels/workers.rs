//! The Workers panel: every live worker on the same database, this one marked.

use crate::dashboard::panels::Panel;
use crate::dashboard::state::*;
use crate::dashboard::widgets::*;
use castor_store::format::format_duration;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Cell;

pub(crate) const WORKER_COLS: [Col; 8] = [
    col("id", 8, 9),
    grow("host", 8, 2, 6),
    right("pid", 7, 3),
    grow("manager", 7, 1, 2),
    right("heartbeat", 11, 7),
    right("done", 6, 5),
    right("failed", 6, 4),
    col("status", 6, 8),
];

pub(crate) fn workers(state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
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

pub(crate) fn worker_cells(w: &WorkerInfo, this: bool, widths: &[u16]) -> Vec<Cell<'static>> {
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

/// See the module doc.
pub struct Workers;

impl Panel for Workers {
    fn render(&self, state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
        workers(state, area, buf, focused);
    }

    fn rows(&self, state: &DashboardState) -> usize {
        state.workers.len()
    }
}
