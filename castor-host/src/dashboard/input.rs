//! The dashboard's key bindings: a key press becomes an [`Action`], or nothing.
//!
//! | keys | action |
//! | --- | --- |
//! | `q`, Ctrl+C | [`Action::Quit`] (works with the help open too) |
//! | Tab, `→`, `l` / Shift+Tab, `←`, `h` | next / previous pane |
//! | `↑`, `k` / `↓`, `j` | selection up / down (the log: older / newer) |
//! | PgUp / PgDn | up / down by a page |
//! | `g`, Home / `G`, End | first / last row (the log: oldest / newest, following) |
//! | `r` | retry the selected task |
//! | `c` | cancel the selected task (a running one after `y`) |
//! | `y` / `n`, Esc | answer the footer's question (cancel this running task?) |
//! | `p` | pause or resume the selected schedule |
//! | `x`, Delete | remove the selected schedule (asks for a second press first) |
//! | `?` | open or close the help; Esc closes it |
//!
//! While the help is open, only quitting and closing it do anything, so no key acts on a
//! selection the user cannot see. [`HELP`] is the same table for the help overlay.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::state::DashboardState;

/// What a key asks for; [`DashboardState::apply`] carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Stop the worker (the second time, while stopping: stop now).
    Quit,
    /// Focus the next pane.
    NextPane,
    /// Focus the previous pane.
    PrevPane,
    /// Move the selection up one row (the log: one line older).
    Up,
    /// Move the selection down one row (the log: one line newer).
    Down,
    /// Move up by a page.
    PageUp,
    /// Move down by a page.
    PageDown,
    /// Go to the first row (the log: the oldest line).
    Top,
    /// Go to the last row (the log: the newest line, following it again).
    Bottom,
    /// Open or close the key help.
    ToggleHelp,
    /// Retry the selected discarded or cancelled task (in Recent).
    RetrySelected,
    /// Cancel the selected task (running, or retryable in Recent).
    CancelSelected,
    /// Pause the selected schedule, or resume it if it is paused (in Schedules).
    TogglePauseSelected,
    /// Remove the selected schedule (in Schedules): the first press asks for a second.
    RemoveSelected,
    /// Yes to the footer's question (cancel the running task `c` named).
    Confirm,
    /// No to the footer's question.
    Decline,
}

/// The keys and what they do, as the help overlay lists them.
pub const HELP: [(&str, &str); 12] = [
    ("q  Ctrl+C", "quit (again while stopping: now)"),
    ("Tab  → / ⇧Tab  ←", "next / previous pane"),
    ("↑ ↓  k j", "move the selection, scroll the log"),
    ("PgUp PgDn", "move by a page"),
    ("g Home / G End", "first / last (End follows the log)"),
    ("r", "retry a discarded or cancelled task"),
    ("c", "cancel a running or retryable task"),
    ("y / n  Esc", "cancel the running task / keep it"),
    ("p", "pause or resume a schedule"),
    ("x  Del", "remove a schedule (press twice)"),
    ("?", "show or hide this help"),
    ("Esc", "close this help"),
];

/// The action for a key, given what is on screen; `None` for keys with no binding and for
/// key releases (reported on Windows and by terminals with enhanced key reporting).
pub fn action_for(key: KeyEvent, state: &DashboardState) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl {
        return matches!(key.code, KeyCode::Char('c' | 'C')).then_some(Action::Quit);
    }
    if state.show_help {
        return match key.code {
            KeyCode::Char('q') => Some(Action::Quit),
            KeyCode::Char('?') | KeyCode::Esc => Some(Action::ToggleHelp),
            _ => None,
        };
    }
    let action = match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Char('?') => Action::ToggleHelp,
        KeyCode::Tab | KeyCode::Right | KeyCode::Char('l') => Action::NextPane,
        KeyCode::BackTab | KeyCode::Left | KeyCode::Char('h') => Action::PrevPane,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Action::Top,
        KeyCode::End | KeyCode::Char('G') => Action::Bottom,
        KeyCode::Char('r') => Action::RetrySelected,
        KeyCode::Char('c') => Action::CancelSelected,
        KeyCode::Char('p') => Action::TogglePauseSelected,
        KeyCode::Char('x') | KeyCode::Delete => Action::RemoveSelected,
        KeyCode::Char('y') => Action::Confirm,
        KeyCode::Char('n') | KeyCode::Esc => Action::Decline,
        _ => return None,
    };
    Some(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::state::Header;

    fn press(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn check(state: &DashboardState, key: KeyEvent, expected: Option<Action>) {
        assert_eq!(action_for(key, state), expected, "{key:?}");
    }

    #[test]
    fn bindings() {
        let s = DashboardState::new(Header::default());
        let table = [
            (KeyCode::Char('q'), Some(Action::Quit)),
            (KeyCode::Tab, Some(Action::NextPane)),
            (KeyCode::Right, Some(Action::NextPane)),
            (KeyCode::Char('l'), Some(Action::NextPane)),
            (KeyCode::BackTab, Some(Action::PrevPane)),
            (KeyCode::Left, Some(Action::PrevPane)),
            (KeyCode::Char('h'), Some(Action::PrevPane)),
            (KeyCode::Up, Some(Action::Up)),
            (KeyCode::Char('k'), Some(Action::Up)),
            (KeyCode::Down, Some(Action::Down)),
            (KeyCode::Char('j'), Some(Action::Down)),
            (KeyCode::PageUp, Some(Action::PageUp)),
            (KeyCode::PageDown, Some(Action::PageDown)),
            (KeyCode::Home, Some(Action::Top)),
            (KeyCode::Char('g'), Some(Action::Top)),
            (KeyCode::End, Some(Action::Bottom)),
            (KeyCode::Char('G'), Some(Action::Bottom)),
            (KeyCode::Char('?'), Some(Action::ToggleHelp)),
            (KeyCode::Char('r'), Some(Action::RetrySelected)),
            (KeyCode::Char('c'), Some(Action::CancelSelected)),
            (KeyCode::Char('p'), Some(Action::TogglePauseSelected)),
            (KeyCode::Char('x'), Some(Action::RemoveSelected)),
            (KeyCode::Delete, Some(Action::RemoveSelected)),
            (KeyCode::Char('y'), Some(Action::Confirm)),
            (KeyCode::Char('n'), Some(Action::Decline)),
            (KeyCode::Esc, Some(Action::Decline)),
            (KeyCode::Char('X'), None),
            (KeyCode::Enter, None),
        ];
        for (code, expected) in table {
            check(&s, press(code), expected);
        }
    }

    #[test]
    fn shifted_letters_arrive_with_the_shift_modifier() {
        let s = DashboardState::new(Header::default());
        check(
            &s,
            KeyEvent::new(KeyCode::Char('G'), KeyModifiers::SHIFT),
            Some(Action::Bottom),
        );
        check(
            &s,
            KeyEvent::new(KeyCode::BackTab, KeyModifiers::SHIFT),
            Some(Action::PrevPane),
        );
    }

    #[test]
    fn ctrl_c_quits_and_is_not_cancel() {
        let s = DashboardState::new(Header::default());
        check(
            &s,
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(Action::Quit),
        );
        check(
            &s,
            KeyEvent::new(KeyCode::Char('r'), KeyModifiers::CONTROL),
            None,
        );
    }

    #[test]
    fn the_help_takes_only_quit_and_close() {
        let mut s = DashboardState::new(Header::default());
        s.show_help = true;
        check(&s, press(KeyCode::Esc), Some(Action::ToggleHelp));
        check(&s, press(KeyCode::Char('?')), Some(Action::ToggleHelp));
        check(&s, press(KeyCode::Char('q')), Some(Action::Quit));
        check(&s, press(KeyCode::Char('c')), None);
        check(&s, press(KeyCode::Char('x')), None);
        check(&s, press(KeyCode::Down), None);
        check(
            &s,
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(Action::Quit),
        );
    }

    #[test]
    fn releases_are_ignored() {
        let s = DashboardState::new(Header::default());
        let release = KeyEvent::new_with_kind(
            KeyCode::Char('q'),
            KeyModifiers::NONE,
            KeyEventKind::Release,
        );
        check(&s, release, None);
        let repeat =
            KeyEvent::new_with_kind(KeyCode::Down, KeyModifiers::NONE, KeyEventKind::Repeat);
        check(&s, repeat, Some(Action::Down));
    }
}
