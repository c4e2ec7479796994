//! The Running panel: the attempts this worker claimed, running or waiting for a slot,
//! with their progress; `c` cancels the selected one (after `y`).

use crate::dashboard::input::Action;
use crate::dashboard::panels::Panel;
use crate::dashboard::state::*;
use crate::dashboard::widgets::*;
use castor_store::TaskState;
use castor_store::format::format_duration;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Cell;

/// From this column width on, progress gets a bar as well as a percentage.
pub(crate) const PROGRESS_BAR_WIDTH: u16 = 18;

pub(crate) const RUNNING_COLS: [Col; 6] = [
    col("id", 8, 6),
    grow("task", 10, 2, 9),
    col("mode", 7, 3),
    right("try", 5, 5),
    right("elapsed", 7, 8),
    grow("progress", 8, 3, 7),
];

pub(crate) fn running(state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
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
pub(crate) fn waiting_note(state: &DashboardState) -> Option<String> {
    let waiting = state.running.len() - state.running_count();
    (waiting > 0).then(|| format!("{waiting} waiting for a slot"))
}

pub(crate) fn running_cells(t: &RunningTask, widths: &[u16]) -> Vec<Cell<'static>> {
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
pub(crate) fn progress(t: &RunningTask, width: u16) -> Line<'static> {
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
pub(crate) fn bar(eighths: usize, cells: usize) -> String {
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

/// See the module doc.
pub struct Running;

impl Panel for Running {
    fn render(&self, state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
        running(state, area, buf, focused);
    }

    fn rows(&self, state: &DashboardState) -> usize {
        state.running.len()
    }

    fn keys(&self, _state: &DashboardState) -> Vec<(&'static str, &'static str)> {
        vec![("c", "cancel")]
    }

    fn handle(&self, state: &mut DashboardState, action: Action) -> Option<Option<Command>> {
        (action == Action::CancelSelected).then(|| state.cancel_selected())
    }
}

impl DashboardState {
    pub(crate) fn cancel_selected(&mut self) -> Option<Command> {
        if self.focus == Pane::Running
            && let Some(task) = self.selected_running()
        {
            let (id, name) = (task.id, format!("{} {}", task.task, short_task_id(task.id)));
            let what = match task.phase {
                Phase::Running => "running",
                Phase::Waiting => "claimed and waiting for a slot",
            };
            self.flash(Level::Warn, format!("cancel {name} ({what})? y/n"));
            self.pending_cancel = Some(id);
            return None;
        }
        let target = match self.focus {
            Pane::Recent => self
                .selected_recent()
                .map(|t| (t.id, t.task.clone(), t.state)),
            _ => None,
        };
        match target {
            Some((id, task, TaskState::Retryable)) => {
                self.flash(
                    Level::Info,
                    format!("cancel requested for {task} {}", short_task_id(id)),
                );
                Some(Command::Cancel { id })
            }
            Some((id, task, state)) => {
                let message = format!(
                    "{task} {} is {state}: only running or retryable tasks can be cancelled",
                    short_task_id(id)
                );
                self.flash(Level::Warn, message);
                None
            }
            None => {
                self.flash(
                    Level::Warn,
                    "c cancels a task: select one in Running (or a retryable one in Recent)",
                );
                None
            }
        }
    }

    /// `y` after a `c` on a running task: cancels the task the prompt named, if the prompt
    /// is still showing.
    pub(crate) fn confirm_cancel(&mut self) -> Option<Command> {
        let id = self.pending_cancel.take()?;
        let name = match self.running.iter().find(|t| t.id == id) {
            Some(t) => format!("{} {}", t.task, short_task_id(t.id)),
            None => short_task_id(id),
        };
        self.flash(Level::Info, format!("cancel requested for {name}"));
        Some(Command::Cancel { id })
    }
}
