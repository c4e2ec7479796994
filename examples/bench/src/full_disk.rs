//! A full disk, for real: a small tmpfs mounted in the scratch directory (root only; the
//! scenario says so and is skipped otherwise), filled with a filler file. Measured: the
//! CPU a worker uses while its writes fail, and how long after the filler is deleted the
//! work is done, for a disk that fills under a running worker (its tasks' outcomes wait)
//! and for a worker started on a full disk.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use castor_abi::TaskHandle;
use castor_bench::{noop, pause};

use crate::table::Report;
use crate::worker::{Worker, tree_cpu_time};
use crate::{Options, Row, measure_group};

/// The tmpfs's size.
const SIZE_MIB: u32 = 16;

/// How long a task waits for its result after the space is freed.
const PATIENCE: Duration = Duration::from_secs(120);

/// A tmpfs mounted for one run; unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(options: &Options, name: &str) -> Result<Tmpfs, String> {
        let path = options.scratch.join(name);
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={SIZE_MIB}m"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs { path })
    }

    fn db(&self) -> PathBuf {
        self.path.join("bench.db")
    }

    /// Appends to a filler file until the file system is full; returns its path.
    fn fill(&self) -> Result<PathBuf, String> {
        let path = self.path.join("filler");
        let mut file = std::fs::File::create(&path).map_err(|e| format!("filler: {e}"))?;
        for size in [64 * 1024, 4096, 512] {
            let block = vec![0xa5u8; size];
            while file.write_all(&block).is_ok() {}
        }
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Both scenarios; skipped with a message where no tmpfs can be mounted.
pub fn run(options: &Options, report: &mut Report) -> Result<(), String> {
    let rows = [
        Row::new(
            "full_disk_running_cpu",
            "disk fills under a worker: CPU while writes fail",
            "% of a core",
        ),
        Row::new(
            "full_disk_running_recovery",
            "  then: space freed to all its tasks done",
            "s",
        ),
        Row::new(
            "full_disk_start_cpu",
            "worker started on a full disk: CPU while it waits",
            "% of a core",
        ),
        Row::new(
            "full_disk_start_recovery",
            "  then: space freed to a round trip done",
            "s",
        ),
    ];
    if !rows.iter().any(|r| options.wants(r.id, &r.name)) {
        return Ok(());
    }
    if let Err(why) = Tmpfs::mount(options, "full-disk-probe") {
        println!("(full-disk scenarios skipped: cannot mount a tmpfs here: {why}; run as root)");
        return Ok(());
    }
    let failing = Duration::from_secs(if options.quick { 2 } else { 10 });
    measure_group(report, options, &rows, |run| {
        let (running_cpu, running_recovery) = filled_under_a_worker(options, run, failing)?;
        let (start_cpu, start_recovery) = started_on_a_full_disk(options, run, failing)?;
        Ok(vec![
            running_cpu,
            running_recovery,
            start_cpu,
            start_recovery,
        ])
    })
}

/// Tasks run while the disk fills; their outcomes cannot be written. Returns the worker's
/// CPU while they wait (% of a core) and the seconds from freeing the space until every
/// task is done.
fn filled_under_a_worker(
    options: &Options,
    run: usize,
    failing: Duration,
) -> Result<(f64, f64), String> {
    let fs = Tmpfs::mount(options, &format!("full-disk-running-{run}"))?;
    let target = format!("{}:bench_threads", options.library.display());
    let worker = Worker::start_target(options, &target, fs.db(), &["--threads", "4"])?;
    let app = castor_bench::bench_threads()
        .with_database(fs.db())
        .open()
        .map_err(|e| e.to_string())?;
    let tasks = pause::delay_many(&app, (0..20).map(|_| (300,))).map_err(|e| e.to_string())?;
    // Let the first ones start, then fill the disk under them.
    std::thread::sleep(Duration::from_millis(100));
    let filler = fs.fill()?;
    // By then every claimed task has ended, and its outcome could not be written.
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_share(&worker, failing);
    std::fs::remove_file(&filler).map_err(|e| format!("cannot free the space: {e}"))?;
    let freed = Instant::now();
    join_all(&tasks)?;
    Ok((cpu, freed.elapsed().as_secs_f64()))
}

/// The disk is full before the worker starts. Returns the worker's CPU while it waits and
/// the seconds from freeing the space until a task dispatched then has its result.
fn started_on_a_full_disk(
    options: &Options,
    run: usize,
    failing: Duration,
) -> Result<(f64, f64), String> {
    let fs = Tmpfs::mount(options, &format!("full-disk-start-{run}"))?;
    let app = castor_bench::bench_threads()
        .with_database(fs.db())
        .open()
        .map_err(|e| e.to_string())?;
    let filler = fs.fill()?;
    let target = format!("{}:bench_threads", options.library.display());
    let worker = Worker::start_target(options, &target, fs.db(), &[])?;
    std::thread::sleep(Duration::from_millis(500));
    let cpu = cpu_share(&worker, failing);
    std::fs::remove_file(&filler).map_err(|e| format!("cannot free the space: {e}"))?;
    let freed = Instant::now();
    let task = noop::delay(&app).map_err(|e| e.to_string())?;
    join_all(&[task])?;
    Ok((cpu, freed.elapsed().as_secs_f64()))
}

fn cpu_share(worker: &Worker, over: Duration) -> f64 {
    let before = tree_cpu_time(worker.pid());
    std::thread::sleep(over);
    let used = tree_cpu_time(worker.pid()) - before;
    used.as_secs_f64() / over.as_secs_f64() * 100.0
}

fn join_all(tasks: &[TaskHandle<()>]) -> Result<(), String> {
    for task in tasks {
        task.join(PATIENCE)
            .map_err(|e| format!("after the space was freed: {e}"))?;
    }
    Ok(())
}
