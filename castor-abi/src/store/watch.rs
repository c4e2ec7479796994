//! Wakes waiters when the database changes, without polling it.
//!
//! Every commit in WAL mode writes to the `-wal` file, so an inotify watch on that file
//! sees another process's commit within tens of microseconds and costs nothing while idle.
//! A [`Watcher`] runs one thread that blocks on the watch and bumps a *generation* counter
//! on every burst of writes; waiters (`join`, `resolve`, the worker's claim loop) remember
//! the generation they last checked at, re-check the database when it moves, and go back to
//! sleep otherwise.
//!
//! The event can arrive a little before the commit is visible (the write lands before the
//! WAL index is updated, and with `synchronous=FULL` an fsync sits in between), so a burst is
//! followed by a few trailing wake-ups, and a slow fallback tick covers anything missed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::StoreError;

/// Wake-ups after a burst of writes, measured from its last event.
const TRAILING: [Duration; 4] = [
    Duration::from_micros(150),
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(25),
];

/// The fallback tick: at worst, a missed event delays a waiter by this much.
const FALLBACK: Duration = Duration::from_secs(1);

type Listener = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Shared {
    generation: Mutex<u64>,
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

/// Watches one database for commits by any process.
pub struct Watcher {
    shared: Arc<Shared>,
    stop: Option<sys::Stop>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("generation", &self.generation())
            .finish()
    }
}

impl Watcher {
    /// Starts watching the database at `db_path` (its `-wal` file, which exists while any
    /// connection has the database open).
    ///
    /// # Errors
    /// [`StoreError::Watch`] if the watch or its thread cannot be set up.
    pub fn start(db_path: &Path) -> Result<Watcher, StoreError> {
        let mut wal = db_path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let watch_error = |error: std::io::Error| StoreError::Watch {
            path: wal.clone(),
            reason: error.to_string(),
        };
        let (source, stop) = sys::Source::new(&wal).map_err(watch_error)?;
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("castor-watch".into())
            .spawn(move || run(source, &thread_shared))
            .map_err(watch_error)?;
        Ok(Watcher {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The current generation; it moves on every change seen.
    pub fn generation(&self) -> u64 {
        *lock(&self.shared.generation)
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

    /// Calls `listener` (on the watcher's thread) at every change. Keep it short: a flag
    /// and a channel send.
    pub fn subscribe(&self, listener: impl Fn() + Send + Sync + 'static) {
        lock(&self.shared.listeners).push(Box::new(listener));
    }

    /// Wakes every waiter now, as if the database had changed (used after this process's
    /// own writes, which the waiter may be waiting for).
    pub fn notify(&self) {
        self.shared.broadcast();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.signal();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut source: sys::Source, shared: &Shared) {
    let mut last_event: Option<Instant> = None;
    let mut trailing_sent = TRAILING.len();
    loop {
        let timeout = match last_event {
            Some(at) if trailing_sent < TRAILING.len() => {
                (at + TRAILING[trailing_sent]).saturating_duration_since(Instant::now())
            }
            _ => FALLBACK,
        };
        match source.wait(timeout) {
            sys::Wake::Stop => return,
            sys::Wake::Changed => {
                last_event = Some(Instant::now());
                trailing_sent = 0;
                shared.broadcast();
            }
            sys::Wake::Timeout => {
                if last_event.is_some() && trailing_sent < TRAILING.len() {
                    trailing_sent += 1;
                }
                shared.broadcast();
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod sys {
    //! inotify on the `-wal` file, and an eventfd to stop the thread.

    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    pub(super) enum Wake {
        Changed,
        Timeout,
        Stop,
    }

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

#[cfg(not(target_os = "linux"))]
mod sys {
    //! Without inotify: a 2 ms tick. Correct, but it costs a little CPU while idle.

    use std::io;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    pub(super) enum Wake {
        Changed,
        Timeout,
        Stop,
    }

    pub(super) struct Source(Arc<AtomicBool>);
    pub(super) struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub(super) fn signal(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl Source {
        pub(super) fn new(_wal: &Path) -> io::Result<(Source, Stop)> {
            let flag = Arc::new(AtomicBool::new(false));
            Ok((Source(Arc::clone(&flag)), Stop(flag)))
        }

        pub(super) fn wait(&mut self, _timeout: Duration) -> Wake {
            std::thread::sleep(Duration::from_millis(2));
            if self.0.load(Ordering::SeqCst) {
                Wake::Stop
            } else {
                Wake::Changed
            }
        }
    }
}
