//! Wakes waiters when the database changes, whatever tells us it did.
//!
//! A [`Notifier`] runs one thread that blocks on a driver's [`ChangeSource`] (SQLite: an
//! inotify watch on the `-wal` file, or a poll of `PRAGMA data_version` where inotify is
//! missing; PostgreSQL: `LISTEN`) and bumps a *generation* counter on every change it
//! reports; waiters (`join`, `resolve`, the worker's loop) remember the generation they
//! last checked at, look at the database again when it moves, and go back to sleep
//! otherwise, so no wake-up is lost between a check and a sleep.
//!
//! A source may report a change a little before the change is visible (SQLite's write
//! lands before the WAL index is updated); such a source asks for trailing wake-ups after
//! each burst. A slow fallback tick covers anything missed.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The fallback tick: at worst, a missed change delays a waiter by this much.
pub const FALLBACK: Duration = Duration::from_secs(1);

/// What a [`ChangeSource`] saw while it waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Another connection may have committed.
    Changed,
    /// The source's connection to the database was lost and is back: a change too
    /// (whatever was committed meanwhile was not reported), and a sign that the server
    /// answers again.
    Reconnected,
    /// Nothing happened within the timeout.
    Timeout,
    /// The notifier is being dropped: return from the thread.
    Stop,
}

/// A driver's way of noticing commits by other connections.
pub trait ChangeSource: Send + 'static {
    /// Blocks until a change, the timeout, or a stop.
    fn wait(&mut self, timeout: Duration) -> Wake;

    /// Wake-ups to send after a burst of changes, measured from its last change (for a
    /// source whose report can precede the change's visibility).
    fn trailing(&self) -> &'static [Duration] {
        &[]
    }

    /// True if every commit by another connection is reported while the source is
    /// connected, and a change is reported after any gap (PostgreSQL's `LISTEN`): then a
    /// fallback tick without a reported change means nothing changed, and a waiter that
    /// counts [`Notifier::changes`] may skip looking.
    fn complete(&self) -> bool {
        false
    }

    /// Takes the cell that holds the session whose changes the source must not report
    /// (see [`Notifier::ignore_session`]); a source that cannot tell sessions apart
    /// leaves it.
    fn skip_session(&mut self, _session: Arc<AtomicI64>) {}
}

/// [`Notifier::ignore_session`]'s value for "none".
pub const NO_SESSION: i64 = i64::MIN;

/// Makes a blocked [`ChangeSource::wait`] return [`Wake::Stop`].
pub type Stopper = Box<dyn FnOnce() + Send + Sync>;

type Listener = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Shared {
    generation: Mutex<u64>,
    /// Changes the source reported (fallback ticks left out).
    changes: AtomicU64,
    /// Times the source's connection came back after it was lost.
    reconnects: AtomicU64,
    changed: Condvar,
    wakers: Mutex<Vec<Waker>>,
    listeners: Mutex<Vec<Listener>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn broadcast(&self) {
        {
            let mut generation = lock(&self.generation);
            *generation = generation.wrapping_add(1);
        }
        self.changed.notify_all();
        for waker in std::mem::take(&mut *lock(&self.wakers)) {
            waker.wake();
        }
        for listener in lock(&self.listeners).iter() {
            listener();
        }
    }
}

/// Wakes waiters on one database's changes, by any process.
pub struct Notifier {
    shared: Arc<Shared>,
    stop: Option<Stopper>,
    thread: Option<JoinHandle<()>>,
    /// What the source is, for people (`inotify on tasks.db-wal`).
    describe: String,
    /// The source's [`ChangeSource::complete`].
    complete: bool,
    /// The session whose changes the source skips ([`NO_SESSION`]: none).
    skipped: Arc<AtomicI64>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("source", &self.describe)
            .field("generation", &self.generation())
            .finish()
    }
}

impl Notifier {
    /// Starts the notifier's thread on `source`; `stop` interrupts the source's wait.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start(
        source: impl ChangeSource,
        stop: Stopper,
        describe: String,
    ) -> std::io::Result<Notifier> {
        let shared = Arc::new(Shared::default());
        let complete = source.complete();
        let skipped = Arc::new(AtomicI64::new(NO_SESSION));
        let mut source = source;
        source.skip_session(Arc::clone(&skipped));
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("castor-watch".into())
            .spawn(move || run(source, &thread_shared))?;
        Ok(Notifier {
            shared,
            stop: Some(stop),
            thread: Some(thread),
            describe,
            complete,
            skipped,
        })
    }

    /// What the notifier watches, for people.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// The current generation; it moves on every change seen.
    pub fn generation(&self) -> u64 {
        *lock(&self.shared.generation)
    }

    /// How many changes the source reported so far (the generation also moves at every
    /// fallback tick and [`Notifier::notify`]).
    pub fn changes(&self) -> u64 {
        self.shared.changes.load(Ordering::Acquire)
    }

    /// Skips the changes `session` commits (a worker's own connection, whose commits
    /// need no wake-up: the worker knows what it wrote), where the source can tell
    /// sessions apart; `None` skips none. Called again when the session changes (a
    /// reconnection).
    pub fn ignore_session(&self, session: Option<i64>) {
        self.skipped
            .store(session.unwrap_or(NO_SESSION), Ordering::Release);
    }

    /// How many times the source's connection came back after it was lost (PostgreSQL's
    /// `LISTEN`): a waiter whose statements fail for a lost server may try again at once.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Acquire)
    }

    /// True if the source reports every change (see [`ChangeSource::complete`]): a
    /// broadcast that leaves [`Notifier::changes`] where it was is a fallback tick or this
    /// process's own [`Notifier::notify`], not another connection's commit.
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Blocks until the generation differs from `since` or `deadline` passes; returns the
    /// generation.
    pub fn wait_past(&self, since: u64, deadline: Instant) -> u64 {
        let mut generation = lock(&self.shared.generation);
        while *generation == since {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            generation = self
                .shared
                .changed
                .wait_timeout(generation, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *generation
    }

    /// Wakes `waker` at the next change, or now if the generation already moved past
    /// `since`.
    pub fn wake_on_change(&self, since: u64, waker: &Waker) {
        let mut wakers = lock(&self.shared.wakers);
        if self.generation() != since {
            drop(wakers);
            waker.wake_by_ref();
            return;
        }
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    /// Calls `listener` (on the notifier's thread) at every change. Keep it short: a flag
    /// and a channel send.
    pub fn subscribe(&self, listener: impl Fn() + Send + Sync + 'static) {
        lock(&self.shared.listeners).push(Box::new(listener));
    }

    /// Wakes every waiter now, as if the database had changed (after this process's own
    /// writes, which a waiter may be waiting for).
    pub fn notify(&self) {
        self.shared.broadcast();
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut source: impl ChangeSource, shared: &Shared) {
    let trailing = source.trailing();
    let mut last_change: Option<Instant> = None;
    let mut trailing_sent = trailing.len();
    loop {
        let timeout = match last_change {
            Some(at) if trailing_sent < trailing.len() => {
                (at + trailing[trailing_sent]).saturating_duration_since(Instant::now())
            }
            _ => FALLBACK,
        };
        match source.wait(timeout) {
            Wake::Stop => return,
            wake @ (Wake::Changed | Wake::Reconnected) => {
                if wake == Wake::Reconnected {
                    shared.reconnects.fetch_add(1, Ordering::AcqRel);
                }
                last_change = Some(Instant::now());
                trailing_sent = 0;
                shared.changes.fetch_add(1, Ordering::AcqRel);
                shared.broadcast();
            }
            Wake::Timeout => {
                if last_change.is_some() && trailing_sent < trailing.len() {
                    trailing_sent += 1;
                }
                shared.broadcast();
            }
        }
    }
}
