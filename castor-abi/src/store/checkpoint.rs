//! A background checkpointer: copies the WAL into the database file on its own thread and
//! connection, so that the worker's claims and completions never stop for a checkpoint's
//! fsync (they open their connections with `checkpoint_pages: 0`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Store, StoreOptions};
use crate::error::StoreError;

/// How often the checkpointer looks for new commits. A timer, not the change watcher:
/// waking on every commit would add a thread to every commit's wake-ups, and on a small
/// machine that is measurable latency; copying a tenth of a second's WAL at a time is as
/// good as copying after each commit.
const EVERY: Duration = Duration::from_millis(100);

/// Checkpoints the WAL after changes; stops when dropped.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// Starts checkpointing `path` after its commits.
    ///
    /// # Errors
    /// The database cannot be opened, or the thread cannot start.
    pub fn start(path: &Path, options: StoreOptions) -> Result<Checkpointer, StoreError> {
        let store = Store::open(path, options)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("castor-checkpoint".into())
            .spawn(move || run(&store, &flag))
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

fn run(store: &Store, stop: &AtomicBool) {
    let mut seen = store.data_version().ok();
    loop {
        // Dropping the checkpointer unparks this thread.
        std::thread::park_timeout(EVERY);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let version = store.data_version().ok();
        if version == seen {
            continue;
        }
        seen = version;
        // A failed checkpoint is retried after the next change; commits never depend on it.
        let _ = store.checkpoint();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
