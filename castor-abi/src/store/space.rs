//! Disk space: what the database's file system has free, how large the WAL is, and giving
//! the WAL's space back with a truncating checkpoint. The worker uses these to wait
//! cheaply while a disk is full and to recover on its own once space is freed.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Store, busy_wait, classify};
use crate::error::StoreError;

/// How long a truncating checkpoint waits for other connections to finish before giving
/// up (it runs when the worker is idle or recovering: never worth blocking it for long).
const TRUNCATE_PATIENCE: Duration = Duration::from_millis(100);

/// The `-wal` file beside a database.
pub(crate) fn wal_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

impl Store {
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
    /// Waits at most [`TRUNCATE_PATIENCE`] for other connections' reads and writes; returns
    /// `false` if they kept the checkpoint from completing (nothing is lost then: the WAL
    /// stays as it was, to be checkpointed later).
    ///
    /// # Errors
    /// The checkpoint failed (a full disk, an I/O error).
    pub fn truncate_wal(&mut self) -> Result<bool, StoreError> {
        let path = self.path.clone();
        self.conn
            .busy_handler(Some(busy_wait_briefly))
            .map_err(|e| classify(&path, "set the busy handler", e))?;
        let busy = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            });
        let restored = self.conn.busy_handler(Some(busy_wait));
        let busy = busy.map_err(|e| classify(&path, "truncate the WAL", e))?;
        restored.map_err(|e| classify(&path, "set the busy handler", e))?;
        Ok(busy == 0)
    }
}

/// A busy handler that gives up after [`TRUNCATE_PATIENCE`] (1 ms sleeps).
fn busy_wait_briefly(attempt: i32) -> bool {
    let tries = TRUNCATE_PATIENCE.as_millis() as i32;
    if attempt >= tries {
        return false;
    }
    std::thread::sleep(Duration::from_millis(1));
    true
}
