//! The Schedules panel: schedules of this manager; `p` pauses or resumes the selected one,
//! `x` (twice) removes it. The Waiting panel's list sits beside or under it.

use crate::dashboard::input::Action;
use crate::dashboard::panels::Panel;
use crate::dashboard::panels::waiting::starts_in;
use crate::dashboard::state::*;
use crate::dashboard::widgets::*;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Widget};

pub(crate) const SCHEDULE_COLS: [Col; 5] = [
    right("id", 4, 6),
    grow("task", 10, 3, 9),
    grow("cadence", 10, 2, 7),
    right("runs", 6, 5),
    right("next run", 10, 8),
];

/// The schedules, a selectable table; when there are none and the layout gave the pane
/// one row, its rule says "none".
pub(crate) fn schedules(state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
    let len = state.schedules.len();
    let empty = len == 0;
    // Empty, the pane is just its rule (see `layout::fitted`), so the title says it.
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
    table_rows(inner, buf, focused, &view);
}

pub(crate) fn schedule_cells(s: &ScheduleRow, widths: &[u16]) -> Vec<Cell<'static>> {
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
pub(crate) fn task_and_name(task: &str, name: Option<&str>, width: u16) -> Line<'static> {
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

/// See the module doc.
pub struct Schedules;

impl Panel for Schedules {
    fn render(&self, state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
        schedules(state, area, buf, focused);
    }

    fn collapses(&self) -> bool {
        true
    }

    fn rows(&self, state: &DashboardState) -> usize {
        state.schedules.len()
    }

    fn keys(&self, state: &DashboardState) -> Vec<(&'static str, &'static str)> {
        let pause = if state.selected_schedule().is_some_and(|s| s.paused) {
            "resume"
        } else {
            "pause"
        };
        vec![("p", pause), ("x", "remove")]
    }

    fn handle(&self, state: &mut DashboardState, action: Action) -> Option<Option<Command>> {
        match action {
            Action::TogglePauseSelected => Some(state.toggle_pause_selected()),
            Action::RemoveSelected => Some(state.remove_selected()),
            _ => None,
        }
    }
}

impl DashboardState {
    /// The selected schedule's id and how flash messages name it, if the Schedules pane
    /// has the focus and a schedule is selected; otherwise flashes `why` and gives `None`.
    pub(crate) fn focused_schedule(&mut self, why: &str) -> Option<(i64, String)> {
        let target = self
            .selected_schedule()
            .filter(|_| self.focus == Pane::Schedules)
            .map(|s| (s.id, schedule_label(s)));
        if target.is_none() {
            self.flash(Level::Warn, why);
        }
        target
    }

    pub(crate) fn toggle_pause_selected(&mut self) -> Option<Command> {
        let (id, label) =
            self.focused_schedule("p pauses or resumes a schedule: select one in Schedules")?;
        let (paused, finished) = self
            .selected_schedule()
            .map_or((false, false), |s| (s.paused, s.next_run_in.is_none()));
        if paused {
            self.flash(Level::Info, format!("resume requested for {label}"));
            Some(Command::ResumeSchedule { id })
        } else if finished {
            self.flash(
                Level::Warn,
                format!("{label} is finished: nothing to pause (x removes it)"),
            );
            None
        } else {
            self.flash(Level::Info, format!("pause requested for {label}"));
            Some(Command::PauseSchedule { id })
        }
    }

    pub(crate) fn remove_selected(&mut self) -> Option<Command> {
        // Taken first: whatever this press does, it answers the pending removal.
        let pending = self.pending_removal.take().filter(|_| self.flash.is_some());
        let (id, label) = self.focused_schedule("x removes a schedule: select one in Schedules")?;
        if pending == Some(id) {
            self.flash(Level::Info, format!("removal requested for {label}"));
            Some(Command::RemoveSchedule { id })
        } else {
            self.flash(Level::Warn, format!("press x again to remove {label}"));
            self.pending_removal = Some(id);
            None
        }
    }
}
