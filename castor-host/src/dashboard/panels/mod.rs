//! The dashboard's panels, one module each. A panel owns what it shows of the
//! [`DashboardState`] (its columns, how its rows read, its empty line), the keys that act
//! on its selection (the footer's hints, and the actions themselves), and what it asks of
//! the layout ([`Panel::rows`]: how many rows it has to show). The [`Panel`] trait is what
//! the frame and the layout see; [`panel`] finds the one for a [`Pane`].
//!
//! Adding a panel: a module here with a unit struct implementing [`Panel`], a variant of
//! [`Pane`] (its place in Tab order), its entry in [`panel`], and its place in the
//! `layout` plans.

pub mod limits;
pub mod logs;
pub mod recent;
pub mod running;
pub mod schedules;
pub mod stats;
pub mod waiting;
pub mod workers;

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;

use super::input::Action;
use super::state::{Command, DashboardState, Pane};

/// One panel of the dashboard. Panels are unit structs: their data lives in the
/// [`DashboardState`] (updated from the worker's events and the store's reads in one
/// place), and a panel reads the part it shows.
pub trait Panel: Sync {
    /// Draws the panel over `area`, its title rule included; thick and coloured when
    /// `focused`.
    fn render(&self, state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool);

    /// How many rows of content it has (lines, for the log): the layout gives a panel at
    /// most this many, plus its rule and column header.
    fn rows(&self, state: &DashboardState) -> usize;

    /// Whether, with no rows, it is drawn as its rule alone (saying "none") rather than
    /// with a line saying it is empty: for panels that are often empty.
    fn collapses(&self) -> bool {
        false
    }

    /// The keys that act on its selection, as the footer hints them (`("r", "retry")`);
    /// the keys that work everywhere are the frame's.
    fn keys(&self, _state: &DashboardState) -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }

    /// Carries out a selection action (`r`, `c`, `p`, `x`) while the panel has the focus:
    /// `Some(outcome)` if the action is one of its keys (the outcome is what the worker
    /// must do, if anything), `None` if it is not (the dashboard then says where the key
    /// works).
    fn handle(&self, _state: &mut DashboardState, _action: Action) -> Option<Option<Command>> {
        None
    }
}

/// The panel drawn for `pane`.
pub fn panel(pane: Pane) -> &'static dyn Panel {
    match pane {
        Pane::Running => &running::Running,
        Pane::Recent => &recent::Recent,
        Pane::Stats => &stats::Stats,
        Pane::Workers => &workers::Workers,
        Pane::Schedules => &schedules::Schedules,
        Pane::Waiting => &waiting::Waiting,
        Pane::Limits => &limits::Limits,
        Pane::Logs => &logs::Logs,
    }
}
