//! `castor LIB:MANAGER --reload`: watch the library file, check each new build in a
//! child, and re-execute the worker on a good one.
//!
//! - **Private copies.** With `--reload` the worker never loads the file it watches: it
//!   loads a copy of it in a directory of its own (`$TMPDIR/castor-reload-PID`, 0700), and
//!   so do its process children. A build written in place over the watched file (a copy,
//!   some linkers) therefore never changes the code a running worker has mapped, and each
//!   new build gets a new path and inode, so the dynamic loader cannot hand back a cached
//!   handle. The copy checked is the copy the next process loads: it runs the bytes that
//!   were checked, whatever is written to the watched path meanwhile.
//! - **Watching.** inotify on the library's directory (not on the file: cargo removes the
//!   file and hard-links the new build in its place, a new inode a watch on the file would
//!   never see), through `rustix` like the SQLite change source. Any event in the
//!   directory, and a look every second, compare the file's identity (device, inode,
//!   size, modification time) with the build running.
//! - **Settling.** A changed file is used once its identity has not moved for [`SETTLE`]
//!   and, if it is ELF, its program and section header tables lie within its length (an
//!   ELF file being written front to back ends with its section headers). A file that
//!   settles but is no ELF at all is checked anyway, so the reason printed is the
//!   loader's, as at a start.
//! - **The check** is `castor __check-library` on the copy, a child process: a library
//!   whose load crashes, aborts or hangs takes the child with it, never the worker (a
//!   loaded library can never be unloaded). It loads the copy, runs the ABI check, finds
//!   the manager and prints its tasks; an error is the sentence a start with that file
//!   would print, naming the watched path.
//! - **The switch.** A good build: the worker's graceful stop ([`Controller::reload`]),
//!   then [`exec`] of `/proc/self/exe` with the same arguments and the copy in
//!   [`COPY_ENV`]. The new process (same pid) loads the copy, prints its start line and
//!   `reloaded`, and watches again. A bad build: the running one keeps serving and the
//!   worker says why, once per build.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use castor_abi::abi::ManagerDecl;
use castor_store::format::format_duration;
use castor_store::now_us;
use serde::{Deserialize, Serialize};

use crate::cli::CheckLibraryArgs;
use crate::logging;
use crate::plugin::Plugin;
use crate::worker::Controller;

/// Set by a reloading worker for the process it becomes: the checked copy to load.
pub const COPY_ENV: &str = "CASTOR_RELOAD_COPY";

/// Set with [`COPY_ENV`]: the watched file's identity when it was copied, so a build
/// written between the check and the new process's start is still seen as new.
pub const IDENTITY_ENV: &str = "CASTOR_RELOAD_IDENTITY";

/// Set with [`COPY_ENV`]: when the old process stopped claiming (microseconds since the
/// epoch), for the `reloaded` line.
pub const STOPPED_AT_ENV: &str = "CASTOR_RELOAD_STOPPED_AT";

/// How long a changed library must stay unchanged before it is checked.
pub const SETTLE: Duration = Duration::from_millis(300);

/// How often a changed library's identity is read while it settles.
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// The longest wait on inotify before looking at the file anyway.
const RESCAN: Duration = Duration::from_secs(1);

/// The longest a check may take before it is given up (and the build with it).
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong around a reload (the worker keeps running on the build it has, except
/// for [`ReloadError::Exec`]).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The private directory or a copy could not be made.
    #[error("--reload: cannot copy {library} to {copy}: {source}")]
    Copy {
        /// The watched library.
        library: PathBuf,
        /// Where the copy was going.
        copy: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The library's directory cannot be watched.
    #[error("--reload: cannot watch {dir} for new builds: {source}")]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Re-executing castor failed; the worker had already stopped.
    #[error("reload: cannot re-execute castor on the new build: {source}")]
    Exec {
        /// Why.
        source: std::io::Error,
    },
}

/// A file's identity: what changes when it is replaced or rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Identity {
    fn of(path: &Path) -> Option<Identity> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        })
    }

    fn encode(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            self.dev, self.ino, self.size, self.mtime, self.mtime_nsec
        )
    }

    fn decode(text: &str) -> Option<Identity> {
        let mut parts = text.split(':');
        let mut next = || parts.next()?.parse::<i128>().ok();
        Some(Identity {
            dev: u64::try_from(next()?).ok()?,
            ino: u64::try_from(next()?).ok()?,
            size: u64::try_from(next()?).ok()?,
            mtime: i64::try_from(next()?).ok()?,
            mtime_nsec: i64::try_from(next()?).ok()?,
        })
    }
}

/// The run's private copies of the library.
#[derive(Debug)]
pub struct Copies {
    dir: PathBuf,
    library: PathBuf,
    current: PathBuf,
    /// The watched file's identity when `current` was copied from it.
    identity: Option<Identity>,
    /// Set in a process a reload started: when the old one stopped claiming.
    stopped_at: Option<i64>,
}

impl Copies {
    /// The copy this process runs: the checked one a reload handed over ([`COPY_ENV`]),
    /// else a fresh copy of `library`. Removes the copies of earlier builds.
    ///
    /// # Errors
    /// [`ReloadError::Copy`] if the directory or the copy cannot be made.
    pub fn start(library: &Path) -> Result<Copies, ReloadError> {
        let dir = std::env::temp_dir().join(format!("castor-reload-{}", std::process::id()));
        let copy_error = |copy: &Path, source| ReloadError::Copy {
            library: library.to_path_buf(),
            copy: copy.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| copy_error(&dir, e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| copy_error(&dir, e))?;
        let handed = std::env::var_os(COPY_ENV)
            .map(PathBuf::from)
            .filter(|copy| copy.parent() == Some(dir.as_path()) && copy.is_file());
        let mut copies = Copies {
            dir,
            library: library.to_path_buf(),
            current: PathBuf::new(),
            identity: None,
            stopped_at: None,
        };
        match handed {
            Some(copy) => {
                copies.current = copy;
                copies.identity = std::env::var(IDENTITY_ENV)
                    .ok()
                    .and_then(|text| Identity::decode(&text));
                copies.stopped_at = std::env::var(STOPPED_AT_ENV)
                    .ok()
                    .and_then(|text| text.parse().ok());
            }
            None => {
                // A missing library is refused by the load, with its usual sentence.
                if library.exists() {
                    let identity = Identity::of(library);
                    let copy = copies.next_path();
                    std::fs::copy(library, &copy).map_err(|e| copy_error(&copy, e))?;
                    copies.current = copy;
                    copies.identity = identity;
                } else {
                    copies.current = library.to_path_buf();
                }
            }
        }
        copies.remove_others(&copies.current.clone());
        Ok(copies)
    }

    /// The copy this process loads.
    pub fn current(&self) -> &Path {
        &self.current
    }

    /// In a process a reload started: how long ago the old one stopped claiming.
    pub fn reloaded_after(&self) -> Option<Duration> {
        let stopped_at = self.stopped_at?;
        Some(Duration::from_micros(
            u64::try_from(now_us() - stopped_at).unwrap_or(0),
        ))
    }

    /// Removes the directory, at a stop that is not a reload.
    pub fn remove_all(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn next_path(&self) -> PathBuf {
        let name = self
            .library
            .file_name()
            .map_or_else(|| "library.so".into(), |n| n.to_string_lossy().into_owned());
        self.dir.join(format!("{}-{name}", now_us()))
    }

    fn remove_others(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.path() != keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// A checked build waiting for the worker to stop: what [`exec`] runs on.
#[derive(Debug, Clone)]
pub struct Pending {
    copy: PathBuf,
    identity: Identity,
    stopped_at: i64,
}

/// Where the watcher leaves a checked build for the caller of the worker.
pub type Slot = Arc<Mutex<Option<Pending>>>;

/// Takes the build a reload waits for, if any.
pub fn take(slot: &Slot) -> Option<Pending> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// A task as the check reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckedTask {
    /// Its name.
    pub name: String,
    /// `thread` or `process`.
    pub mode: String,
    /// The fingerprint of its arguments' types (empty from a library that declares none).
    #[serde(default)]
    pub args_fingerprint: String,
    /// The fingerprint of its result's type.
    #[serde(default)]
    pub result_fingerprint: String,
}

/// What `castor __check-library` prints on success, as one JSON line.
#[derive(Debug, Serialize, Deserialize)]
struct CheckReport {
    tasks: Vec<CheckedTask>,
}

/// The tasks of a manager as the check reports them.
pub fn checked_tasks(manager: &ManagerDecl) -> Vec<CheckedTask> {
    manager
        .tasks
        .iter()
        .map(|t| CheckedTask {
            name: t.name.to_string(),
            mode: t.mode.to_string(),
            args_fingerprint: t.args_fingerprint.to_string(),
            result_fingerprint: t.result_fingerprint.to_string(),
        })
        .collect()
}

/// `castor __check-library`: loads the library (a private copy), checks its ABI, finds
/// the manager and prints its tasks. Errors name `--shown-as`, the watched file.
///
/// # Errors
/// The sentence a start with that library would print.
pub fn check_mode(args: &CheckLibraryArgs) -> anyhow::Result<()> {
    let shown = |e: crate::plugin::LoadError| e.shown_as(&args.shown_as);
    let plugin = Plugin::load(&args.library).map_err(shown)?;
    let manager = plugin.into_manager(&args.manager).map_err(shown)?;
    let report = CheckReport {
        tasks: checked_tasks(&manager),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Starts the thread that watches `library` for new builds while the worker runs the one
/// in `copies`; a good one is left in `slot` and the worker asked to reload.
///
/// # Errors
/// [`ReloadError::Watch`] if the directory cannot be watched.
pub fn watch(
    copies: &Copies,
    manager: String,
    running: Vec<CheckedTask>,
    controller: Controller,
    slot: Slot,
) -> Result<(), ReloadError> {
    let library = copies.library.clone();
    let dir = match library.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let watch_error = |source: std::io::Error| ReloadError::Watch {
        dir: dir.clone(),
        source,
    };
    let watcher = DirWatch::new(&dir).map_err(watch_error)?;
    let watched = Watched {
        library,
        dir: copies.dir.clone(),
        manager,
        running,
        seen: copies.identity,
    };
    std::thread::Builder::new()
        .name("castor-reload".into())
        .spawn(move || watched.run(watcher, &controller, &slot))
        .map_err(watch_error)?;
    Ok(())
}

/// The watcher thread's state.
struct Watched {
    library: PathBuf,
    /// The private directory copies go to.
    dir: PathBuf,
    manager: String,
    /// The tasks of the build running.
    running: Vec<CheckedTask>,
    /// The identity of the last build looked at (running, or refused).
    seen: Option<Identity>,
}

impl Watched {
    fn run(mut self, mut watcher: DirWatch, controller: &Controller, slot: &Slot) {
        loop {
            watcher.wait(RESCAN);
            let Some(now) = Identity::of(&self.library) else {
                // Between cargo's removal and its new link; or gone for good.
                continue;
            };
            if Some(now) == self.seen {
                continue;
            }
            let Some(settled) = settle(&self.library) else {
                continue;
            };
            if Some(settled) == self.seen {
                continue;
            }
            self.seen = Some(settled);
            if elf_state(&self.library) == ElfState::Partial {
                tracing::debug!(
                    target: logging::BANNER,
                    "reload: {} changed but is not a whole ELF file yet; waiting",
                    self.library.display()
                );
                // Still being written: the next write moves its identity again.
                self.seen = None;
                continue;
            }
            match self.try_build(settled) {
                Ok(Some((pending, build))) => {
                    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(pending);
                    controller.reload(build);
                    return;
                }
                Ok(None) => {}
                Err(reason) => tracing::warn!(
                    target: logging::BANNER,
                    "reload: the new build of {} cannot be used, the running build keeps serving: {reason}",
                    self.library.display()
                ),
            }
        }
    }

    /// Copies the settled build and checks the copy. `Ok(None)`: the file moved while it
    /// was copied (looked at again at its next change).
    fn try_build(&mut self, settled: Identity) -> Result<Option<(Pending, String)>, String> {
        let name = self
            .library
            .file_name()
            .map_or_else(|| "library.so".into(), |n| n.to_string_lossy().into_owned());
        let copy = self.dir.join(format!("{}-{name}", now_us()));
        if let Err(e) = std::fs::copy(&self.library, &copy) {
            let _ = std::fs::remove_file(&copy);
            return Err(format!("cannot copy it to {}: {e}", copy.display()));
        }
        if Identity::of(&self.library) != Some(settled) {
            let _ = std::fs::remove_file(&copy);
            self.seen = None;
            return Ok(None);
        }
        let tasks = match check(&copy, &self.manager, &self.library) {
            Ok(tasks) => tasks,
            Err(reason) => {
                let _ = std::fs::remove_file(&copy);
                return Err(reason);
            }
        };
        let mut build = format!(
            "new build of {name} checked ({} task{})",
            tasks.len(),
            if tasks.len() == 1 { "" } else { "s" }
        );
        let changes = [
            task_changes(&self.running, &tasks),
            signature_changes(&self.running, &tasks),
        ]
        .concat();
        if !changes.is_empty() {
            build.push_str(": ");
            build.push_str(&changes.join(", "));
        }
        let pending = Pending {
            copy,
            identity: settled,
            stopped_at: now_us(),
        };
        Ok(Some((pending, build)))
    }
}

/// Waits until `library`'s identity has not changed for [`SETTLE`]; `None` if it
/// disappeared.
fn settle(library: &Path) -> Option<Identity> {
    let mut last = Identity::of(library)?;
    let mut since = Instant::now();
    loop {
        std::thread::sleep(SETTLE_POLL);
        let now = Identity::of(library)?;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= SETTLE {
            return Some(last);
        }
    }
}

/// What the first bytes of a file say about its completeness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ElfState {
    /// An ELF file whose header tables lie within its length.
    Whole,
    /// Empty, zeros where the header goes, or an ELF file shorter than its tables reach:
    /// still being written.
    Partial,
    /// Not ELF: checked anyway, so the loader says what it is.
    Other,
}

fn elf_state(path: &Path) -> ElfState {
    let mut header = Vec::with_capacity(64);
    let read = std::fs::File::open(path).and_then(|file| {
        let len = file.metadata()?.len();
        file.take(64).read_to_end(&mut header)?;
        Ok(len)
    });
    match read {
        Ok(len) => elf_header_state(&header, len),
        Err(_) => ElfState::Partial,
    }
}

/// [`ElfState`] from a file's first (up to) 64 bytes and its length.
fn elf_header_state(header: &[u8], len: u64) -> ElfState {
    if header.len() < 4 || header[..4] == [0; 4] {
        return ElfState::Partial;
    }
    if header[..4] != *b"\x7fELF" {
        return ElfState::Other;
    }
    let little = header.get(5) == Some(&1);
    let int = |at: usize, size: usize| -> Option<u64> {
        let bytes = header.get(at..at + size)?;
        let mut value = 0u64;
        for i in 0..size {
            let byte = if little {
                bytes[size - 1 - i]
            } else {
                bytes[i]
            };
            value = (value << 8) | u64::from(byte);
        }
        Some(value)
    };
    // (offset, entry size, count) of the program and section header tables.
    let fields = match header.get(4) {
        Some(2) => [(0x20, 8, 0x36, 0x38), (0x28, 8, 0x3a, 0x3c)],
        Some(1) => [(0x1c, 4, 0x2a, 0x2c), (0x20, 4, 0x2e, 0x30)],
        _ => return ElfState::Other,
    };
    let mut end = 0u64;
    for (offset, width, entry, count) in fields {
        let (Some(offset), Some(entry), Some(count)) =
            (int(offset, width), int(entry, 2), int(count, 2))
        else {
            return ElfState::Partial;
        };
        end = end.max(offset.saturating_add(entry.saturating_mul(count)));
    }
    if end <= len {
        ElfState::Whole
    } else {
        ElfState::Partial
    }
}

/// Runs `castor __check-library` on `copy`: the new build's tasks, or the sentence that
/// says why it cannot run (naming `library`, the watched path).
fn check(copy: &Path, manager: &str, library: &Path) -> Result<Vec<CheckedTask>, String> {
    let mut child = Command::new("/proc/self/exe")
        .arg("__check-library")
        .arg("--manager")
        .arg(manager)
        .arg("--shown-as")
        .arg(library)
        .arg(copy)
        .env_remove(COPY_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the check: {e}"))?;
    let read = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + CHECK_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(SETTLE_POLL / 5),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "loading it did not finish within {}",
                    format_duration(CHECK_TIMEOUT)
                ));
            }
            Err(e) => return Err(format!("cannot wait for the check: {e}")),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if status.success() {
        let report = stdout
            .lines()
            .rev()
            .find_map(|line| serde_json::from_str::<CheckReport>(line).ok())
            .ok_or_else(|| "the check printed no task list".to_owned())?;
        return Ok(report.tasks);
    }
    if let Some(message) = stderr
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("castor: error: "))
    {
        return Err(message.to_owned());
    }
    use std::os::unix::process::ExitStatusExt;
    Err(match status.signal() {
        Some(signal) => format!("loading it killed the checking process (signal {signal})"),
        None => format!("the check failed ({status})"),
    })
}

/// What the new build changes in the manager's task list, for the reload line: tasks
/// added, dropped, or moved to another mode (a few names each, then how many more).
fn task_changes(running: &[CheckedTask], new: &[CheckedTask]) -> Vec<String> {
    let mut added = Vec::new();
    let mut moved = Vec::new();
    for task in new {
        match running.iter().find(|t| t.name == task.name) {
            None => added.push(task.name.as_str()),
            Some(old) if old.mode != task.mode => {
                moved.push(format!("{} ({})", task.name, task.mode));
            }
            Some(_) => {}
        }
    }
    let dropped: Vec<&str> = running
        .iter()
        .filter(|task| !new.iter().any(|t| t.name == task.name))
        .map(|task| task.name.as_str())
        .collect();
    let moved: Vec<&str> = moved.iter().map(String::as_str).collect();
    [("adds", added), ("drops", dropped), ("moves", moved)]
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(verb, names)| format!("{verb} {}", few(&names)))
        .collect()
}

/// `a, b, c and 7 more`.
fn few(names: &[&str]) -> String {
    const SHOWN: usize = 3;
    if names.len() <= SHOWN + 1 {
        names.join(", ")
    } else {
        format!(
            "{} and {} more",
            names[..SHOWN].join(", "),
            names.len() - SHOWN
        )
    }
}

/// The tasks whose argument or result types changed between the running build and the
/// new one, for the reload line: after the reload, tasks dispatched by apps built against
/// the old types wait for a worker of the old build (their arguments' fingerprint no longer
/// matches), and apps of the old build joining new results get `IncompatibleResult`.
fn signature_changes(running: &[CheckedTask], new: &[CheckedTask]) -> Vec<String> {
    let changed: Vec<&str> = new
        .iter()
        .filter(|task| {
            running.iter().any(|old| {
                old.name == task.name
                    && (old.args_fingerprint != task.args_fingerprint
                        || old.result_fingerprint != task.result_fingerprint)
            })
        })
        .map(|task| task.name.as_str())
        .collect();
    if changed.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "changes the types of {} (tasks queued with the old types wait for a worker of the old build)",
        few(&changed)
    )]
}

/// Re-executes castor (`/proc/self/exe`, same pid, same arguments) on the checked build.
/// Returns only if the exec failed. Call it once the worker stopped and the terminal and
/// the standard descriptors are restored.
pub fn exec(pending: &Pending) -> ReloadError {
    let mut args = std::env::args_os();
    let mut command = Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    command
        .args(args)
        .env(COPY_ENV, &pending.copy)
        .env(IDENTITY_ENV, pending.identity.encode())
        .env(STOPPED_AT_ENV, pending.stopped_at.to_string());
    ReloadError::Exec {
        source: command.exec(),
    }
}

/// An inotify watch on a directory (through `rustix`).
struct DirWatch {
    inotify: std::os::fd::OwnedFd,
}

impl DirWatch {
    fn new(dir: &Path) -> std::io::Result<DirWatch> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let inotify = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?;
        // A new file linked or renamed in, or one written in place.
        let mask = WatchFlags::CREATE
            | WatchFlags::MOVED_TO
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::MODIFY
            | WatchFlags::ATTRIB
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM;
        inotify::add_watch(&inotify, dir, mask)?;
        Ok(DirWatch { inotify })
    }

    /// Waits until something happens in the directory or `timeout` passes; drains the
    /// events (the caller looks at the file itself).
    fn wait(&mut self, timeout: Duration) {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let timeout = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(&self.inotify, PollFlags::IN)];
        if matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0) {
            let mut buf = [0u8; 4096];
            while matches!(rustix::io::read(&self.inotify, &mut buf), Ok(n) if n > 0) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf64(shoff: u64, shnum: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        h[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        h[0x38..0x3a].copy_from_slice(&4u16.to_le_bytes());
        h[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        h[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        h[0x3c..0x3e].copy_from_slice(&shnum.to_le_bytes());
        h
    }

    #[test]
    fn a_file_is_whole_once_its_header_tables_fit() {
        let header = elf64(10_000, 30);
        assert_eq!(elf_header_state(&header, 10_000 + 30 * 64), ElfState::Whole);
        assert_eq!(elf_header_state(&header, 10_000), ElfState::Partial);
        assert_eq!(elf_header_state(&header[..40], 1 << 20), ElfState::Partial);
        assert_eq!(elf_header_state(&[], 0), ElfState::Partial);
        assert_eq!(elf_header_state(&[0; 64], 1 << 20), ElfState::Partial);
        assert_eq!(elf_header_state(b"not a library\n", 14), ElfState::Other);
    }

    #[test]
    fn the_real_worker_binary_is_whole() {
        let exe = std::env::current_exe().expect("test executable");
        assert_eq!(elf_state(&exe), ElfState::Whole);
    }

    #[test]
    fn identities_survive_the_environment() {
        let id = Identity {
            dev: 64_769,
            ino: 1234,
            size: 99,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
        };
        assert_eq!(Identity::decode(&id.encode()), Some(id));
        assert_eq!(Identity::decode("1:2"), None);
    }

    #[test]
    fn the_reload_line_names_added_dropped_and_moved_tasks() {
        let t = |name: &str, mode: &str| CheckedTask {
            name: name.into(),
            mode: mode.into(),
            args_fingerprint: String::new(),
            result_fingerprint: String::new(),
        };
        let running = [t("a", "thread"), t("b", "thread"), t("c", "process")];
        let new = [t("a", "thread"), t("c", "thread"), t("d", "process")];
        assert_eq!(
            task_changes(&running, &new),
            ["adds d", "drops b", "moves c (thread)"]
        );
        assert!(task_changes(&running, &running).is_empty());
        let many: Vec<CheckedTask> = (0..9).map(|i| t(&format!("t{i}"), "thread")).collect();
        assert_eq!(task_changes(&many, &[]), ["drops t0, t1, t2 and 6 more"]);
    }

    #[test]
    fn the_reload_line_names_the_tasks_whose_types_changed() {
        let t = |name: &str, args: &str, result: &str| CheckedTask {
            name: name.into(),
            mode: "thread".into(),
            args_fingerprint: args.into(),
            result_fingerprint: result.into(),
        };
        let running = [
            t("charge", "a1", "r1"),
            t("label", "a2", "r2"),
            t("old", "a3", "r3"),
        ];
        let new = [
            t("charge", "a9", "r1"),
            t("label", "a2", "r9"),
            t("fresh", "a4", "r4"),
        ];
        assert_eq!(
            signature_changes(&running, &new),
            [
                "changes the types of charge, label (tasks queued with the old types wait for a \
              worker of the old build)"
            ]
        );
        assert!(signature_changes(&running, &running).is_empty());
    }
}
