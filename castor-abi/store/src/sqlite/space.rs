//! Disk space: what the database's file system has free, how large the WAL is, keeping the
//! WAL bounded, and giving its space back with a truncating checkpoint. The worker uses
//! these to wait cheaply while a disk is full and to recover on its own once space is
//! freed.
//!
//! **Checkpoints.** SQLite's automatic checkpoint runs after every commit that leaves the
//! WAL past a threshold, and it is passive: while another process commits all the time
//! (an app calling `delay` in a loop while a worker drains) it seldom completes, the WAL
//! keeps growing, and every further commit pays for another try (a third of the
//! end-to-end rate, measured). Each connection here replaces it with a WAL hook: past the
//! connection's bound, one passive checkpoint per bound's worth of new pages (alone, the
//! first one completes and the next write starts the WAL over); past four times the
//! bound, the connection's next write is followed by a checkpoint that waits briefly for
//! the others (`RESTART`), so that the WAL does start over. Measured with an app calling
//! `delay` in a loop while a worker drains: 38% more tasks a second than SQLite's own
//! checkpoints at 1,000 (worker) and 10,000 (app) pages, and a WAL that peaked at 4,000 to
//! 7,000 pages (16 to 28 MiB) instead of 12,000; a bare lower app threshold (2,000) cost
//! 30% instead.

use std::ffi::{CString, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use rusqlite::ffi;

use super::{SqliteDriver, busy_wait};
use crate::error::StoreError;

/// How long a checkpoint that waits for other connections waits before giving up (it is
/// tried again later: never worth blocking a `delay` or the worker's loop for long).
const CHECKPOINT_PATIENCE: Duration = Duration::from_millis(100);

/// Past this many times its bound, a connection restarts the WAL (see the module docs; 4
/// let the WAL reach 9,000 pages under that load, for the same rate).
const RESTART_FACTOR: u32 = 2;

/// The state of a connection's WAL hook (see the module docs). The store keeps it boxed
/// for as long as the connection can call the hook.
pub(crate) struct WalHook {
    /// The connection's bound, in pages.
    bound: u32,
    /// The WAL size (pages) at which the next passive checkpoint runs.
    next_passive: AtomicU32,
    /// The WAL size (pages) at which the next restarting checkpoint is asked for.
    next_restart: AtomicU32,
    /// Asked for: the next write of this connection is followed by a restarting
    /// checkpoint.
    restart: AtomicBool,
}

/// The `-wal` file beside a database.
pub(crate) fn wal_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

impl SqliteDriver {
    /// Bytes this user may still write on the file system that holds the database
    /// (`statvfs`), or `None` if the file system cannot be asked.
    pub fn free_bytes(&self) -> Option<u64> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let dir = CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs is plain data; all-zero is a valid value of it.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `dir` is a valid NUL-terminated path and `stat` a live struct to fill.
        if unsafe { libc::statvfs(dir.as_ptr(), &raw mut stat) } != 0 {
            return None;
        }
        #[allow(clippy::useless_conversion)] // the field types differ between targets
        let (blocks, size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
        Some(blocks.saturating_mul(size))
    }

    /// The size of the database's `-wal` file now, in bytes (0 if there is none).
    pub fn wal_bytes(&self) -> u64 {
        std::fs::metadata(wal_path(&self.path)).map_or(0, |m| m.len())
    }

    /// Copies every page in the WAL into the database and truncates the WAL to zero bytes
    /// (`PRAGMA wal_checkpoint(TRUNCATE)`), giving its space back to the file system.
    /// Waits at most [`CHECKPOINT_PATIENCE`] for other connections' reads and writes;
    /// returns `false` if they kept the checkpoint from completing (nothing is lost then:
    /// the WAL stays as it was, to be checkpointed later).
    ///
    /// # Errors
    /// The checkpoint failed (a full disk, an I/O error).
    pub fn truncate_wal(&mut self) -> Result<bool, StoreError> {
        self.waiting_checkpoint("TRUNCATE", "truncate the WAL")
    }

    /// A checkpoint that waits at most [`CHECKPOINT_PATIENCE`] for other connections;
    /// true if it completed.
    fn waiting_checkpoint(
        &mut self,
        mode: &str,
        operation: &'static str,
    ) -> Result<bool, StoreError> {
        self.conn
            .busy_handler(Some(busy_wait_briefly))
            .map_err(|e| self.error("set the busy handler", e))?;
        let busy = self
            .conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
                row.get::<_, i64>(0)
            });
        let restored = self.conn.busy_handler(Some(busy_wait));
        let busy = busy.map_err(|e| self.error(operation, e))?;
        restored.map_err(|e| self.error("set the busy handler", e))?;
        Ok(busy == 0)
    }

    /// Replaces SQLite's automatic checkpoints on this connection with the WAL hook
    /// described in the module docs, `bound` pages being the connection's bound.
    pub(crate) fn install_wal_hook(&mut self, bound: u32) {
        let bound = bound.max(1);
        let hook = Box::new(WalHook {
            bound,
            next_passive: AtomicU32::new(bound),
            next_restart: AtomicU32::new(bound.saturating_mul(RESTART_FACTOR)),
            restart: AtomicBool::new(false),
        });
        let arg: *const WalHook = &*hook;
        // SAFETY: the handle is this store's live connection; `arg` points into a box the
        // store keeps (field `wal_hook`, dropped after `conn`) for as long as the
        // connection can call the hook.
        unsafe {
            ffi::sqlite3_wal_hook(
                self.conn.handle(),
                Some(checkpoint_hook),
                arg.cast_mut().cast::<c_void>(),
            );
        }
        self.wal_hook = Some(hook);
    }

    /// After a write: the restarting checkpoint the WAL hook asked for, if it did. Its
    /// failure is no error of the write (the WAL stays as it was; the hook asks again
    /// later).
    pub(crate) fn restart_wal_if_asked(&mut self) {
        if self
            .wal_hook
            .as_ref()
            .is_some_and(|hook| hook.restart.swap(false, Ordering::Relaxed))
        {
            let _ = self.waiting_checkpoint("RESTART", "checkpoint the WAL");
        }
    }
}

/// The WAL hook (see the module docs), called by SQLite after each commit of the
/// connection with the number of pages in the WAL.
unsafe extern "C" fn checkpoint_hook(
    arg: *mut c_void,
    db: *mut ffi::sqlite3,
    name: *const c_char,
    pages: c_int,
) -> c_int {
    // SAFETY: `arg` is the `WalHook` the store keeps alive while the hook is installed.
    let hook = unsafe { &*arg.cast::<WalHook>() };
    let pages = u32::try_from(pages).unwrap_or(0);
    if pages < hook.bound {
        // The WAL started over.
        hook.next_passive.store(hook.bound, Ordering::Relaxed);
        hook.next_restart
            .store(hook.bound.saturating_mul(RESTART_FACTOR), Ordering::Relaxed);
        return ffi::SQLITE_OK;
    }
    if pages >= hook.next_passive.load(Ordering::Relaxed) {
        hook.next_passive
            .store(pages.saturating_add(hook.bound), Ordering::Relaxed);
        // SAFETY: `db` and `name` are what SQLite passed to this hook; a checkpoint from
        // inside it is what SQLite's own automatic checkpoint does. Its result does not
        // matter: an incomplete one is followed by another.
        unsafe {
            ffi::sqlite3_wal_checkpoint_v2(
                db,
                name,
                ffi::SQLITE_CHECKPOINT_PASSIVE,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }
    if pages >= hook.next_restart.load(Ordering::Relaxed) {
        // A restart may fail while others hold the database: not at every commit then.
        hook.next_restart
            .store(pages.saturating_add(hook.bound / 2), Ordering::Relaxed);
        hook.restart.store(true, Ordering::Relaxed);
    }
    ffi::SQLITE_OK
}

/// A busy handler that gives up after [`CHECKPOINT_PATIENCE`]: yields first (most holds
/// are short), then sleeps from 50 us, doubling up to 1 ms.
fn busy_wait_briefly(attempt: i32) -> bool {
    /// Tries that only yield.
    const SPINS: u32 = 16;
    let attempt = u32::try_from(attempt).unwrap_or(0);
    let Some(sleeps) = attempt.checked_sub(SPINS) else {
        std::thread::yield_now();
        return true;
    };
    let step = |n: u32| Duration::from_micros((50u64 << n.min(5)).min(1_000));
    let waited: Duration = (0..sleeps).map(step).sum();
    if waited >= CHECKPOINT_PATIENCE {
        return false;
    }
    std::thread::sleep(step(sleeps));
    true
}
