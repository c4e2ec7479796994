//! The SQLite driver's change sources: what tells a [`Notifier`] that another connection
//! committed.
//!
//! - On Linux, an inotify watch on the `-wal` file: every commit in WAL mode writes to it,
//!   so another process's commit is seen within tens of microseconds, at no cost while
//!   idle. The event can arrive a little before the commit is visible (the write lands
//!   before the WAL index is updated, and with `synchronous=FULL` an fsync sits in
//!   between), so a burst is followed by a few trailing wake-ups.
//! - Elsewhere, or with `CASTOR_NOTIFY=poll`: a poll of `PRAGMA data_version` (it changes
//!   when another connection commits) every [`POLL_INTERVAL`] on a connection of its own.
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

/// How often the portable source reads `PRAGMA data_version`.
pub const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// The environment variable that forces the polling source (`CASTOR_NOTIFY=poll`), for
/// file systems where inotify sees no other machine's writes and for tests.
pub const NOTIFY_ENV: &str = "CASTOR_NOTIFY";

/// Starts the notifier for the database file at `path`: inotify on its `-wal` file where
/// the platform has it, a `data_version` poll otherwise.
pub(crate) fn notifier(database: &Database, path: &Path) -> Result<Notifier, StoreError> {
    let watch_error = |reason: String| StoreError::Watch {
        database: database.clone(),
        reason,
    };
    let forced_poll = std::env::var(NOTIFY_ENV).is_ok_and(|v| v == "poll");
    #[cfg(target_os = "linux")]
    if !forced_poll {
        let wal = wal_path(path);
        let (source, stop) = inotify::Source::new(&wal).map_err(|e| watch_error(e.to_string()))?;
        let describe = format!("inotify on {}", wal.display());
        return Notifier::start(source, Box::new(move || stop.signal()), describe)
            .map_err(|e| watch_error(e.to_string()));
    }
    let _ = (forced_poll, wal_path);
    let stop = Arc::new(AtomicBool::new(false));
    let source = PollSource {
        path: path.to_path_buf(),
        conn: None,
        last: None,
        stop: Arc::clone(&stop),
    };
    let describe = format!(
        "a poll of PRAGMA data_version every {:?} on {}",
        POLL_INTERVAL,
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
struct PollSource {
    path: PathBuf,
    /// Opened on first use (the file may not exist yet when the notifier starts).
    conn: Option<Connection>,
    last: Option<i64>,
    stop: Arc<AtomicBool>,
}

impl PollSource {
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
                    return Wake::Changed;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Wake::Timeout;
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - now));
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
mod inotify {
    //! inotify on the `-wal` file, and an eventfd to stop the thread.

    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use crate::notify::Wake;

    pub(super) struct Source {
        inotify: OwnedFd,
        stop: Arc<OwnedFd>,
        path: CString,
        watching: bool,
    }

    pub(super) struct Stop(Arc<OwnedFd>);

    impl Stop {
        pub(super) fn signal(&self) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            unsafe {
                libc::write(
                    self.0.as_raw_fd(),
                    (&raw const one).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
    }

    fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    }

    const MASK: u32 = libc::IN_MODIFY | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;

    impl Source {
        pub(super) fn new(wal: &Path) -> io::Result<(Source, Stop)> {
            // SAFETY: plain syscalls with constant flags.
            let inotify =
                owned(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
            // SAFETY: as above.
            let stop = Arc::new(owned(unsafe {
                libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            })?);
            let path = CString::new(PathBuf::from(wal).as_os_str().as_bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let mut source = Source {
                inotify,
                stop: Arc::clone(&stop),
                path,
                watching: false,
            };
            source.add_watch();
            Ok((source, Stop(stop)))
        }

        fn add_watch(&mut self) {
            // SAFETY: `path` is a valid NUL-terminated string; the fd is ours.
            let wd = unsafe {
                libc::inotify_add_watch(self.inotify.as_raw_fd(), self.path.as_ptr(), MASK)
            };
            // The -wal file may not exist yet (no connection has the database open); then
            // the short retry below keeps trying and the timeout path keeps waking waiters.
            self.watching = wd >= 0;
        }

        pub(super) fn wait(&mut self, timeout: Duration) -> Wake {
            if !self.watching {
                self.add_watch();
            }
            let timeout = if self.watching {
                timeout
            } else {
                timeout.min(Duration::from_millis(50))
            };
            let mut fds = [
                libc::pollfd {
                    fd: self.inotify.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ts = libc::timespec {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
            };
            // SAFETY: `fds` and `ts` are live for the call; the fds are ours.
            let ready = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
            if ready <= 0 {
                return Wake::Timeout;
            }
            if fds[1].revents != 0 {
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
            let mut buf = [0u8; 4096];
            let mut ended = false;
            loop {
                // SAFETY: reads into a live buffer of the given length.
                let n = unsafe {
                    libc::read(self.inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                };
                let Ok(n) = usize::try_from(n) else { break };
                if n == 0 {
                    break;
                }
                let mut offset = 0;
                let header = std::mem::size_of::<libc::inotify_event>();
                while offset + header <= n {
                    // SAFETY: the kernel wrote a whole event header at `offset`.
                    let event: libc::inotify_event =
                        unsafe { std::ptr::read_unaligned(buf.as_ptr().add(offset).cast()) };
                    if event.mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF)
                        != 0
                    {
                        ended = true;
                    }
                    offset += header + event.len as usize;
                }
            }
            ended
        }
    }
}
