//! The Schedules panel: schedules of this manager; `p` pauses or resumes the selected one,
//! `x` (twice) removes it. The Waiting panel's list sits beside or under it.

use crate::dashboard::input::Action;
use crate::dashboard::panels::Panel;
use crate::dashboard::panels::waiting::{starts_in, waiting};
use crate::dashboard::state::*;
use crate::dashboard::widgets::*;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::border;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Widget};

/// How tall the Schedules pane is, in at most `cap` rows: a title rule, a column header
/// and a row per schedule or waiting task (the longer list of the two, as they are side
/// by side on a full-width pane). Just the rule, which gives the count, when both lists
/// are empty (it then says so) or `cap` has no room for a row.
pub(crate) fn schedules_height(state: &DashboardState, cap: u16) -> u16 {
    let rows = state.schedules.len().max(state.scheduled.len());
    if rows == 0 || cap < 3 {
        1
    } else {
        room_u16(rows + 2).min(cap)
    }
}

pub(crate) const SCHEDULE_COLS: [Col; 5] = [
    right("id", 4, 6),
    grow("task", 10, 3, 9),
    grow("cadence", 10, 2, 7),
    right("runs", 6, 5),
    right("next run", 10, 8),
];

/// From this inner width on, the waiting tasks go beside the schedules rather than under
/// them: the schedules' columns and the waiting tasks' names and start times fit whole,
/// with the separator and the gap.
pub(crate) const WAITING_BESIDE_WIDTH: u16 = 70;

/// Schedules, and beside them (on a wide pane) or under them the tasks waiting for their
/// start time. Only the schedules take a selection; the waiting tasks are for looking at.
pub(crate) fn schedules(state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
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
    fn pane(&self) -> Pane {
        Pane::Schedules
    }

    fn render(&self, state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
        schedules(state, area, buf, focused);
    }

    fn rows(&self, state: &DashboardState) -> usize {
        state.schedules.len().max(state.scheduled.len())
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
