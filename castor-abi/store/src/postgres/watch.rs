//! The PostgreSQL driver's change source: `LISTEN castor_changes` on a connection of its
//! own. The schema's triggers send a `NOTIFY` on that channel when a transaction that
//! made work available, finished a task, asked for a cancel or changed a schedule
//! commits (see migration 1), so waiters wake within a round trip of the commit, from any
//! host, at no cost while idle.
//!
//! If the connection drops (a server restart, the network), the source connects again
//! with a growing pause ([`RETRY_FIRST`] doubling to [`RETRY_MAX`]) and, once back,
//! reports a change: whatever was committed meanwhile sent no notification to it, so
//! waiters look again. The notifier's fallback tick keeps waking waiters meanwhile; the
//! source is [complete](ChangeSource::complete), so a worker skips its claims at a tick
//! that brought no notification (an idle worker then runs nothing but its heartbeat).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use super::tls::Target;
use super::{reason, target};
use crate::Role;
use crate::error::StoreError;
use crate::notify::{ChangeSource, NO_SESSION, Notifier, Wake};
use crate::target::Database;

/// The channel the schema's triggers notify.
pub const CHANNEL: &str = "castor_changes";

/// The longest a wait blocks before it looks at the stop flag: the notifier's drop waits
/// at most this long for its thread.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// The first pause before connecting again after the connection dropped.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);

/// The longest pause between two tries to connect again: a worker whose writes fail
/// for a lost server tries them again when this connection comes back, so the server is
/// seen back within about this (a refused connection costs the server nothing).
pub const RETRY_MAX: Duration = Duration::from_secs(1);

/// Starts the notifier for the database `url` names: one connection that listens.
pub(crate) fn notifier(database: &Database, url: &str) -> Result<Notifier, StoreError> {
    let watch_error = |reason: String| StoreError::Watch {
        database: database.clone(),
        reason,
    };
    let target = target(database, url, Some(Role::App))?;
    let client = listen(&target).map_err(|e| match target.problem(&e) {
        Some(problem) => StoreError::Tls {
            database: database.clone(),
            problem,
        },
        None => watch_error(reason(&e)),
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let source = ListenSource {
        target,
        client: Some(client),
        retry: RETRY_FIRST,
        next_try: Instant::now(),
        stop: Arc::clone(&stop),
        skipped: Arc::new(AtomicI64::new(NO_SESSION)),
    };
    Notifier::start(
        source,
        Box::new(move || stop.store(true, Ordering::SeqCst)),
        format!("LISTEN {CHANNEL} on {database}"),
    )
    .map_err(|e| watch_error(e.to_string()))
}

/// A new connection listening on [`CHANNEL`].
fn listen(target: &Target) -> Result<Client, postgres::Error> {
    let mut client = target.connect()?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    Ok(client)
}

/// `LISTEN` on a connection of its own, connected again when it drops.
struct ListenSource {
    target: Target,
    /// `None` while the server cannot be reached.
    client: Option<Client>,
    /// The pause before the next try to connect.
    retry: Duration,
    /// When to try connecting next.
    next_try: Instant,
    stop: Arc<AtomicBool>,
    /// The backend pid whose notifications are skipped (the worker's own connection).
    skipped: Arc<AtomicI64>,
}

impl ListenSource {
    /// True if a notification from the backend `pid` is another session's.
    fn foreign(&self, pid: i32) -> bool {
        i64::from(pid) != self.skipped.load(Ordering::Acquire)
    }
    /// Tries to connect again if it is time; true once connected.
    fn reconnect(&mut self) -> bool {
        if Instant::now() < self.next_try {
            return false;
        }
        match listen(&self.target) {
            Ok(client) => {
                self.client = Some(client);
                self.retry = RETRY_FIRST;
                true
            }
            Err(_) => {
                self.next_try = Instant::now() + self.retry;
                self.retry = (self.retry * 2).min(RETRY_MAX);
                false
            }
        }
    }
}

impl ChangeSource for ListenSource {
    /// Every commit that changes work notifies while the connection stands, and the
    /// reconnection after a drop reports a change.
    fn complete(&self) -> bool {
        true
    }

    fn skip_session(&mut self, session: Arc<AtomicI64>) {
        self.skipped = session;
    }

    fn wait(&mut self, timeout: Duration) -> Wake {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Wake::Stop;
            }
            let now = Instant::now();
            let slice = deadline.saturating_duration_since(now).min(STOP_CHECK);
            let Some(client) = self.client.as_mut() else {
                if self.reconnect() {
                    // Back: anything committed meanwhile notified nobody here.
                    return Wake::Reconnected;
                }
                if now >= deadline {
                    return Wake::Timeout;
                }
                let until_try = self.next_try.saturating_duration_since(now);
                std::thread::sleep(slice.min(until_try).max(Duration::from_millis(1)));
                continue;
            };
            let next = client.notifications().timeout_iter(slice).next();
            match next {
                Ok(Some(first)) => {
                    // One wake-up for everything already queued, unless all of it is the
                    // skipped session's.
                    let mut pids = vec![first.process_id()];
                    while let Ok(Some(n)) = client.notifications().iter().next() {
                        pids.push(n.process_id());
                    }
                    if pids.into_iter().any(|pid| self.foreign(pid)) {
                        return Wake::Changed;
                    }
                    if Instant::now() >= deadline {
                        return Wake::Timeout;
                    }
                }
                Ok(None) if !client.is_closed() => {
                    if Instant::now() >= deadline {
                        return Wake::Timeout;
                    }
                }
                // The connection dropped: connect again at once, then with pauses.
                Ok(None) | Err(_) => {
                    self.client = None;
                    self.next_try = Instant::now();
                }
            }
        }
    }
}
