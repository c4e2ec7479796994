//! Where each panel goes, computed from a plan: a list of columns, each a list of slots
//! top to bottom, each slot one panel or a few side by side. A slot either fits its
//! panels' rows ([`Panel::rows`], plus the rule and column header) within a share of the
//! column, or grows into what the fitted slots leave, by weight (doubled for a slot that
//! is the focused panel alone). The plans differ by terminal size:
//!
//! - **wide** (from [`WIDE_WIDTH`] columns): two columns; Running, Recent and Tasks by
//!   name on the left, Workers, Schedules, Waiting and the log on the right;
//! - **normal** (from [`TALL_HEIGHT`] rows): one column, each table as wide as the
//!   terminal, Tasks by name beside Workers and Schedules beside Waiting;
//! - **short** (80x24 and the like): two by two, Running beside Recent and Tasks by name
//!   beside Workers, Schedules beside Waiting as tall as their rows (one rule each when
//!   empty), then the log.
//!
//! The Limits panel's slot is optional: left out while no task has a limit.
//!
//! Below 60x15 the frame shows only the focused panel (see `view`), and Tab reaches the
//! others. A new panel goes into each plan's list; nothing else here changes.

use ratatui::layout::{Constraint, Layout, Rect};

use super::panels::panel;
use super::state::{DashboardState, Pane};

/// From this width on, the wide plan.
pub const WIDE_WIDTH: u16 = 160;
/// From this height on (below [`WIDE_WIDTH`]), the normal plan.
pub const TALL_HEIGHT: u16 = 30;

/// A terminal size class, each with its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Two columns of panels.
    Wide,
    /// One column, the tables full width.
    Normal,
    /// Two by two.
    Short,
}

impl Size {
    /// The class of an area of `width` x `height`.
    pub fn of(width: u16, height: u16) -> Size {
        if width >= WIDE_WIDTH {
            Size::Wide
        } else if height >= TALL_HEIGHT {
            Size::Normal
        } else {
            Size::Short
        }
    }
}

/// How a slot's height is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Height {
    /// As tall as the tallest of its panels' rows (with rule and column header), at most
    /// the column's height divided by the value; one row (the rule) when they are empty.
    Fit(u16),
    /// A share of what the fitted slots leave, by weight.
    Grow(u16),
}

/// Panels side by side, and how tall.
struct Slot {
    panes: &'static [Pane],
    height: Height,
    /// Left out, rule and all, while its panels have no rows (the Limits panel of a
    /// manager without limits: most dashboards never show it).
    optional: bool,
}

const fn fit(panes: &'static [Pane], share: u16) -> Slot {
    Slot {
        panes,
        height: Height::Fit(share),
        optional: false,
    }
}

/// A fitted slot left out while empty.
const fn optional(panes: &'static [Pane], share: u16) -> Slot {
    Slot {
        panes,
        height: Height::Fit(share),
        optional: true,
    }
}

const fn grow(panes: &'static [Pane], weight: u16) -> Slot {
    Slot {
        panes,
        height: Height::Grow(weight),
        optional: false,
    }
}

const WIDE: [&[Slot]; 2] = [
    &[
        fit(&[Pane::Running], 3),
        grow(&[Pane::Recent], 1),
        fit(&[Pane::Stats], 3),
    ],
    &[
        fit(&[Pane::Workers], 4),
        fit(&[Pane::Schedules], 4),
        fit(&[Pane::Waiting], 4),
        optional(&[Pane::Limits], 4),
        grow(&[Pane::Logs], 1),
    ],
];

const NORMAL: [&[Slot]; 1] = [&[
    fit(&[Pane::Running], 4),
    grow(&[Pane::Recent], 1),
    fit(&[Pane::Stats, Pane::Workers], 4),
    fit(&[Pane::Schedules, Pane::Waiting], 5),
    optional(&[Pane::Limits], 5),
    grow(&[Pane::Logs], 1),
]];

const SHORT: [&[Slot]; 1] = [&[
    grow(&[Pane::Running, Pane::Recent], 3),
    grow(&[Pane::Stats, Pane::Workers], 2),
    fit(&[Pane::Schedules, Pane::Waiting], 4),
    optional(&[Pane::Limits], 5),
    grow(&[Pane::Logs], 3),
]];

fn plan(size: Size) -> &'static [&'static [Slot]] {
    match size {
        Size::Wide => &WIDE,
        Size::Normal => &NORMAL,
        Size::Short => &SHORT,
    }
}

/// Every panel the plan for `size` shows, with its part of `area`.
pub fn arrange(state: &DashboardState, area: Rect, size: Size) -> Vec<(Pane, Rect)> {
    let columns = plan(size);
    let areas = Layout::horizontal(columns.iter().map(|_| Constraint::Fill(1)))
        .spacing(1)
        .split(area);
    let mut placed = Vec::new();
    for (slots, &column) in columns.iter().zip(areas.iter()) {
        let heights = heights(state, slots, column.height);
        let mut y = column.y;
        for (slot, h) in slots.iter().zip(heights) {
            let row = Rect {
                y,
                height: h,
                ..column
            };
            y += h;
            if h == 0 && slot.optional {
                continue;
            }
            let cells = Layout::horizontal(slot.panes.iter().map(|_| Constraint::Fill(1)))
                .spacing(1)
                .split(row);
            placed.extend(slot.panes.iter().copied().zip(cells.iter().copied()));
        }
    }
    placed
}

/// Each slot's height in a column `total` rows tall: the fitted ones first, then the
/// growing ones share the rest (what rounding leaves goes to the last).
fn heights(state: &DashboardState, slots: &[Slot], total: u16) -> Vec<u16> {
    let mut heights: Vec<u16> = slots
        .iter()
        .map(|slot| match slot.height {
            Height::Fit(_) if slot.optional && empty(state, slot.panes) => 0,
            Height::Fit(share) => {
                let share = if slot.panes.contains(&state.focus) {
                    share.saturating_sub(1).max(2)
                } else {
                    share
                };
                fitted(state, slot.panes, total / share)
            }
            Height::Grow(_) => 0,
        })
        .collect();
    let mut rest = total.saturating_sub(heights.iter().sum());
    // The focus doubles the share of a slot it has to itself (Recent, the log), so that
    // the one of them in use shows more; side-by-side slots keep theirs.
    let weight = |slot: &Slot| match slot.height {
        Height::Grow(w) if slot.panes == [state.focus] => w * 2,
        Height::Grow(w) => w,
        Height::Fit(_) => 0,
    };
    let weights: u16 = slots.iter().map(weight).sum();
    let growing: Vec<usize> = (0..slots.len())
        .filter(|&i| weight(&slots[i]) > 0)
        .collect();
    let spare = rest;
    for (n, &i) in growing.iter().enumerate() {
        let share = if n + 1 == growing.len() {
            rest
        } else {
            u16::try_from(u32::from(spare) * u32::from(weight(&slots[i])) / u32::from(weights))
                .unwrap_or(rest)
                .min(rest)
        };
        heights[i] = share;
        rest -= share;
    }
    // With nothing growing, what is left goes to the last slot.
    if let Some(last) = heights.last_mut()
        && growing.is_empty()
    {
        *last += rest;
    }
    heights
}

/// True if none of `panes` has a row to show.
fn empty(state: &DashboardState, panes: &[Pane]) -> bool {
    panes.iter().all(|&p| panel(p).rows(state) == 0)
}

/// A fitted slot's height within `cap`: its rule, its column header and its longest
/// panel's rows. Empty, a slot of panels that collapse ([`Panel::collapses`]) is just
/// their rules, as is one whose `cap` has no room for a row; another keeps a line for
/// its "nothing here" text.
fn fitted(state: &DashboardState, panes: &[Pane], cap: u16) -> u16 {
    let rows = panes
        .iter()
        .map(|&p| panel(p).rows(state))
        .max()
        .unwrap_or(0);
    let collapses = panes.iter().all(|&p| panel(p).collapses());
    if collapses && (rows == 0 || cap < 3) {
        1
    } else {
        u16::try_from(rows.max(1) + 2)
            .unwrap_or(u16::MAX)
            .min(cap)
            .max(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes() {
        assert_eq!(Size::of(80, 24), Size::Short);
        assert_eq!(Size::of(120, 29), Size::Short);
        assert_eq!(Size::of(120, 40), Size::Normal);
        assert_eq!(Size::of(160, 24), Size::Wide);
        assert_eq!(Size::of(200, 60), Size::Wide);
    }

    #[test]
    fn every_panel_is_in_every_plan_once() {
        let all = [
            Pane::Running,
            Pane::Recent,
            Pane::Stats,
            Pane::Workers,
            Pane::Schedules,
            Pane::Waiting,
            Pane::Limits,
            Pane::Logs,
        ];
        for size in [Size::Wide, Size::Normal, Size::Short] {
            let mut shown: Vec<Pane> = plan(size)
                .iter()
                .flat_map(|c| c.iter().flat_map(|s| s.panes.iter().copied()))
                .collect();
            shown.sort_by_key(|p| all.iter().position(|q| q == p));
            assert_eq!(shown, all, "{size:?}");
        }
    }

    #[test]
    fn slots_fill_the_column_exactly() {
        let state = DashboardState::new(super::super::state::Header::default());
        for (w, h) in [(80, 24), (120, 40), (200, 60), (160, 15), (60, 15)] {
            let area = Rect::new(0, 0, w, h);
            let placed = arrange(&state, area, Size::of(w, h));
            assert_eq!(placed.len(), 7, "the Limits panel is left out while empty");
            for (pane, rect) in &placed {
                assert!(rect.bottom() <= h && rect.right() <= w, "{pane:?} {rect:?}");
            }
            let bottom = placed.iter().map(|(_, r)| r.bottom()).max();
            assert_eq!(bottom, Some(h), "{w}x{h}");
        }
    }
}
