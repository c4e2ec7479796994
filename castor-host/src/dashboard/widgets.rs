//! What the frame and the panels draw with: the pane rule and title, tables whose
//! columns drop out by rank when narrow, the shared styles, and text fitting.

use crate::dashboard::state::*;
use castor_store::TaskState;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::border;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, HighlightSpacing, Paragraph, Row, StatefulWidget, Table, TableState,
    Widget,
};

pub(crate) const DIM: Style = Style::new().fg(Color::DarkGray);
pub(crate) const LABEL: Style = Style::new().fg(Color::Gray);
pub(crate) const FOCUS: Color = Color::Cyan;

/// `(the top rows of area, the rest)`; fewer rows if `area` has fewer.
pub(crate) fn take_top(area: Rect, rows: u16) -> (Rect, Rect) {
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
pub(crate) fn take_bottom(area: Rect, rows: u16) -> (Rect, Rect) {
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

/// The dim line an empty pane shows, where its first row would start.
pub(crate) fn placeholder(text: &str, area: Rect, buf: &mut Buffer) {
    Paragraph::new(Span::styled(format!(" {text}"), DIM)).render(area, buf);
}

/// A pane's frame: a top rule carrying the title, thick and coloured when focused.
pub(crate) fn rule(title: Line<'_>, focused: bool) -> Block<'_> {
    let (style, set) = rule_styles(focused);
    Block::new()
        .borders(Borders::TOP)
        .border_set(set)
        .border_style(style)
        .title(title)
}

pub(crate) fn pane_title(which: Pane, detail: String, focused: bool) -> Line<'static> {
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
pub(crate) fn rule_styles(focused: bool) -> (Style, border::Set<'static>) {
    if focused {
        (Style::new().fg(FOCUS).bold(), border::THICK)
    } else {
        (DIM, border::PLAIN)
    }
}

/// "3" or "12/200": the row count, and the selected row when focused.
pub(crate) fn position(len: usize, selected: usize, focused: bool) -> String {
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
pub(crate) struct Col {
    pub(crate) title: &'static str,
    pub(crate) min: u16,
    pub(crate) weight: u16,
    pub(crate) keep: u8,
    pub(crate) right: bool,
}

pub(crate) const fn col(title: &'static str, min: u16, keep: u8) -> Col {
    Col {
        title,
        min,
        weight: 0,
        keep,
        right: false,
    }
}

pub(crate) const fn grow(title: &'static str, min: u16, weight: u16, keep: u8) -> Col {
    Col {
        weight,
        ..col(title, min, keep)
    }
}

pub(crate) const fn right(title: &'static str, min: u16, keep: u8) -> Col {
    Col {
        right: true,
        ..col(title, min, keep)
    }
}

/// The width of each column in `width` cells (one of them for the selection bar), 0 for
/// the columns dropped to make the rest fit.
pub(crate) fn fit_columns(cols: &[Col], width: u16) -> Vec<u16> {
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
pub(crate) struct TableView<'a, F> {
    pub(crate) which: Pane,
    pub(crate) cols: &'a [Col],
    pub(crate) len: usize,
    pub(crate) selected: usize,
    /// Said in the title after the row count (`· 3 waiting for a slot`), if anything.
    pub(crate) note: Option<String>,
    pub(crate) empty: &'a str,
    pub(crate) cells: F,
}

/// Draws a table pane, leaving its last `detail` rows to the caller (`recent`'s error).
pub(crate) fn table<F>(
    area: Rect,
    buf: &mut Buffer,
    focused: bool,
    view: TableView<'_, F>,
    detail: u16,
) where
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
pub(crate) fn header_row(cols: &[Col], shown: &[usize]) -> Row<'static> {
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
pub(crate) fn table_rows<F>(
    table_area: Rect,
    buf: &mut Buffer,
    focused: bool,
    view: &TableView<'_, F>,
) where
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

pub(crate) fn state_color(state: TaskState) -> Color {
    match state {
        TaskState::Waiting => Color::LightBlue,
        TaskState::Scheduled => Color::Blue,
        TaskState::Available => Color::Cyan,
        TaskState::Running => Color::Yellow,
        TaskState::Retryable => Color::Magenta,
        TaskState::Completed => Color::Green,
        TaskState::Discarded => Color::Red,
        TaskState::Cancelled => Color::Gray,
    }
}

pub(crate) fn state_style(state: TaskState) -> Style {
    Style::new().fg(state_color(state))
}

pub(crate) fn level_style(level: Level) -> Style {
    match level {
        Level::Error => Style::new().fg(Color::Red).bold(),
        Level::Warn => Style::new().fg(Color::Yellow),
        Level::Info => Style::new().fg(Color::Green),
        Level::Debug => DIM,
        Level::Output => Style::new().fg(Color::Blue),
    }
}

pub(crate) fn attempts(attempt: u32, max: u32) -> String {
    format!("{attempt}/{max}")
}

/// `0.4/s`, `42/s`.
pub(crate) fn format_rate(rate: f64) -> String {
    if rate < 10.0 {
        format!("{rate:.1}/s")
    } else {
        format!("{rate:.0}/s")
    }
}

/// `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
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

pub(crate) fn room_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// `text` in rows of at most `width` characters (`width` > 0), broken after a space where
/// one is in the row's second half, else anywhere. Characters, not cells, as in [`fit`].
pub(crate) fn wrap(text: &str, width: usize) -> Vec<String> {
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
pub(crate) fn fit(text: &str, width: u16) -> String {
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
pub(crate) fn fit_database(text: &str, width: usize) -> String {
    if text.contains("://") {
        fit(text, u16::try_from(width).unwrap_or(u16::MAX))
    } else {
        fit_left(text, width)
    }
}

/// `text` in at most `width` characters, starting with `…` if cut: for paths.
pub(crate) fn fit_left(text: &str, width: usize) -> String {
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
