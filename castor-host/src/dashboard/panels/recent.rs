//! The Recent panel: attempts that ended, newest first, with the selected one's error
//! under the table when focused; `r` retries a discarded or cancelled task, `c` cancels a
//! retryable one.

use crate::dashboard::input::Action;
use crate::dashboard::panels::Panel;
use crate::dashboard::state::*;
use crate::dashboard::widgets::*;
use castor_store::TaskState;
use castor_store::format::format_duration;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::symbols::border;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Widget, Wrap};

/// From this height on, the focused Recent pane shows the selected attempt's error under
/// its table.
pub(crate) const RECENT_DETAIL_HEIGHT: u16 = 8;
/// The id outranks everything but the state and the name: `r` and `c` act on the selected
/// row, and the id is how the log names it. At 80 columns (a pane of about 38) the
/// columns left are state, id, task and took; the selected attempt's error shows below
/// the table when the pane has the focus and the room.
pub(crate) const RECENT_COLS: [Col; 7] = [
    col("at", 8, 3),
    col("state", 9, 9),
    col("id", 8, 7),
    grow("task", 10, 1, 8),
    right("try", 5, 4),
    right("took", 7, 6),
    grow("error", 10, 3, 5),
];

pub(crate) fn recent(state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
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

pub(crate) fn recent_cells(t: &FinishedTask, widths: &[u16]) -> Vec<Cell<'static>> {
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

/// See the module doc.
pub struct Recent;

impl Panel for Recent {
    fn render(&self, state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
        recent(state, area, buf, focused);
    }

    fn rows(&self, state: &DashboardState) -> usize {
        state.recent.len()
    }

    fn keys(&self, _state: &DashboardState) -> Vec<(&'static str, &'static str)> {
        vec![("r", "retry"), ("c", "cancel")]
    }

    fn handle(&self, state: &mut DashboardState, action: Action) -> Option<Option<Command>> {
        match action {
            Action::RetrySelected => Some(state.retry_selected()),
            Action::CancelSelected => Some(state.cancel_selected()),
            _ => None,
        }
    }
}

impl DashboardState {
    pub(crate) fn retry_selected(&mut self) -> Option<Command> {
        let Some(task) = self
            .selected_recent()
            .filter(|_| self.focus == Pane::Recent)
        else {
            self.flash(
                Level::Warn,
                "r retries a discarded or cancelled task: select one in Recent",
            );
            return None;
        };
        let name = format!("{} {}", task.task, short_task_id(task.id));
        if matches!(task.state, TaskState::Discarded | TaskState::Cancelled) {
            let id = task.id;
            self.flash(Level::Info, format!("retry requested for {name}"));
            Some(Command::Retry { id })
        } else {
            let state = task.state;
            self.flash(
                Level::Warn,
                format!("{name} is {state}: only discarded or cancelled tasks can be retried"),
            );
            None
        }
    }
}
