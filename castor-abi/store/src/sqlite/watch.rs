//! The SQLite driver's change sources: what tells a [`Notifier`] that another connection
//! committed.
//!
//! - On Linux, an inotify watch on the `-wal` file: every commit in WAL mode writes to it,
//!   so another process's commit is seen within tens of microseconds, at no cost while
//!   idle. The event can arrive a little before the commit is visible (the write lands
//!   before the WAL index is updated, and with `synchronous=FULL` an fsync sits in
//!   between), so a burst is followed by a few trailing wake-ups.
//! - Elsewhere, or with `CASTOR_NOTIFY=poll`: a poll of `PRAGMA data_version` (it changes
//!   when another connection commits) on a connection of its own: every [`POLL_INTERVAL`]
//!   after a change, backing off to [`POLL_INTERVAL_IDLE`] while nothing changes.
//!   Portable, at a small cost while idle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::space::wal_path;
use crate::error::StoreError;
use crate::notify::{ChangeSource, Notifier, Wake};
use crate::target::Database;

/// Wake-ups after a burst of inotify events, measured from its last event.
const TRAILING: [Duration; 4] = [
    Duration::from_micros(150),
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(25),
];

/// How often the portable source reads `PRAGMA data_version` after a change.
pub const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// How often it reads it once nothing has changed for a while (each unchanged read
/// doubles the pause up to this): an idle worker on it wakes 40 times a second, not 500,
/// and a task dispatched to it waits at most this long to be seen.
pub const POLL_INTERVAL_IDLE: Duration = Duration::from_millis(25);

/// The environment variable that forces the polling source (`CASTOR_NOTIFY=poll`), for
/// file systems where inotify sees no other machine's writes and for tests.
pub const NOTIFY_ENV: &str = "CASTOR_NOTIFY";

/// Starts the notifier for the database file at `path`: inotify on its `-wal` file where
/// the platform has it, a `data_version` poll otherwise or if [`NOTIFY_ENV`] says `poll`.
pub(crate) fn notifier(database: &Database, path: &Path) -> Result<Notifier, StoreError> {
    let forced_poll = std::env::var(NOTIFY_ENV).is_ok_and(|v| v == "poll");
    start(database, path, forced_poll)
}

/// Starts the notifier for the database file at `path`, on the polling source if `poll`
/// or where the platform has no inotify.
pub(super) fn start(database: &Database, path: &Path, poll: bool) -> Result<Notifier, StoreError> {
    let watch_error = |reason: String| StoreError::Watch {
        database: database.clone(),
        reason,
    };
    #[cfg(target_os = "linux")]
    if !poll {
        let wal = wal_path(path);
        let (source, stop) = inotify::Source::new(&wal).map_err(|e| watch_error(e.to_string()))?;
        let describe = format!("inotify on {}", wal.display());
        return Notifier::start(source, Box::new(move || stop.signal()), describe)
            .map_err(|e| watch_error(e.to_string()));
    }
    let _ = (poll, wal_path);
    let (source, stop) = PollSource::new(path);
    let describe = format!(
        "a poll of PRAGMA data_version every {:?} to {:?} on {}",
        POLL_INTERVAL,
        POLL_INTERVAL_IDLE,
        path.display()
    );
    Notifier::start(
        source,
        Box::new(move || stop.store(true, Ordering::SeqCst)),
        describe,
    )
    .map_err(|e| watch_error(e.to_string()))
}

/// The portable source: `PRAGMA data_version` on a read-only connection of its own.
pub(super) struct PollSource {
    path: PathBuf,
    /// Opened on first use (the file may not exist yet when the notifier starts).
    conn: Option<Connection>,
    last: Option<i64>,
    /// The pause before the next read: [`POLL_INTERVAL`] after a change, doubling up to
    /// [`POLL_INTERVAL_IDLE`] while nothing changes.
    interval: Duration,
    stop: Arc<AtomicBool>,
}

impl PollSource {
    /// The source for the database file at `path`, and the flag that stops its wait.
    pub(super) fn new(path: &Path) -> (PollSource, Arc<AtomicBool>) {
        let stop = Arc::new(AtomicBool::new(false));
        let source = PollSource {
            path: path.to_path_buf(),
            conn: None,
            last: None,
            interval: POLL_INTERVAL,
            stop: Arc::clone(&stop),
        };
        (source, stop)
    }

    fn data_version(&mut self) -> Option<i64> {
        if self.conn.is_none() {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            self.conn = Connection::open_with_flags(&self.path, flags).ok();
        }
        let conn = self.conn.as_ref()?;
        match conn.query_row("PRAGMA data_version", [], |row| row.get(0)) {
            Ok(version) => Some(version),
            Err(_) => {
                // Replaced or unreadable: open again next time.
                self.conn = None;
                None
            }
        }
    }
}

impl ChangeSource for PollSource {
    fn wait(&mut self, timeout: Duration) -> Wake {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Wake::Stop;
            }
            let version = self.data_version();
            if version.is_some() && version != self.last {
                let first = self.last.is_none();
                self.last = version;
                if !first {
                    self.interval = POLL_INTERVAL;
                    return Wake::Changed;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Wake::Timeout;
            }
            std::thread::sleep(self.interval.min(deadline - now));
            self.interval = (self.interval * 2).min(POLL_INTERVAL_IDLE);
        }
    }
}

#[cfg(target_os = "linux")]
impl ChangeSource for inotify::Source {
    fn wait(&mut self, timeout: Duration) -> Wake {
        inotify::Source::wait(self, timeout)
    }

    fn trailing(&self) -> &'static [Duration] {
        &TRAILING
    }
}

#[cfg(target_os = "linux")]
pub(super) mod inotify {
    //! inotify on the `-wal` file, and an eventfd to stop the thread (through `rustix`).

    use std::io;
    use std::mem::MaybeUninit;
    use std::os::fd::OwnedFd;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    use rustix::io::Errno;

    use crate::notify::Wake;

    pub(in crate::sqlite) struct Source {
        inotify: OwnedFd,
        stop: Arc<OwnedFd>,
        path: PathBuf,
        watching: bool,
    }

    pub(in crate::sqlite) struct Stop(Arc<OwnedFd>);

    impl Stop {
        pub(in crate::sqlite) fn signal(&self) {
            // An eventfd takes 8 bytes; it cannot fail short of a full counter, which one
            // stop never reaches.
            let _ = rustix::io::write(&*self.0, &1u64.to_ne_bytes());
        }
    }

    impl Source {
        pub(in crate::sqlite) fn new(wal: &Path) -> io::Result<(Source, Stop)> {
            let inotify = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?;
            let stop = Arc::new(eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?);
            let mut source = Source {
                inotify,
                stop: Arc::clone(&stop),
                path: wal.to_path_buf(),
                watching: false,
            };
            source.add_watch();
            Ok((source, Stop(stop)))
        }

        fn add_watch(&mut self) {
            let mask = WatchFlags::MODIFY | WatchFlags::DELETE_SELF | WatchFlags::MOVE_SELF;
            // The -wal file may not exist yet (no connection has the database open); then
            // the short retry below keeps trying and the timeout path keeps waking waiters.
            self.watching = inotify::add_watch(&self.inotify, &self.path, mask).is_ok();
        }

        pub(in crate::sqlite) fn wait(&mut self, timeout: Duration) -> Wake {
            if !self.watching {
                self.add_watch();
            }
            let timeout = if self.watching {
                timeout
            } else {
                timeout.min(Duration::from_millis(50))
            };
            let timeout = Timespec::try_from(timeout).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
            let mut fds = [
                PollFd::new(&self.inotify, PollFlags::IN),
                PollFd::new(&*self.stop, PollFlags::IN),
            ];
            match poll(&mut fds, Some(&timeout)) {
                Ok(0) | Err(_) => return Wake::Timeout,
                Ok(_) => {}
            }
            if !fds[1].revents().is_empty() {
                return Wake::Stop;
            }
            if self.drain() {
                // The file was deleted or replaced: watch the new one.
                self.watching = false;
            }
            Wake::Changed
        }

        /// Reads every pending event; true if the watch ended.
        fn drain(&mut self) -> bool {
            let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
            let mut events = inotify::Reader::new(&self.inotify, &mut buf);
            let ended = ReadFlags::IGNORED | ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF;
            let mut watch_ended = false;
            loop {
                match events.next() {
                    Ok(event) => watch_ended |= event.events().intersects(ended),
                    Err(Errno::INTR) => {}
                    // `AGAIN`: nothing more to read.
                    Err(_) => return watch_ended,
                }
            }
        }
    }
}
