//! The benchmark's task library: tasks that do nothing (to measure Castor's own cost), one
//! that logs a line (the cost of a task log) and tasks that burn CPU (to measure
//! process-mode scaling), under three managers, one per shape of library (both modes,
//! thread tasks only, process tasks only).

/// Does nothing, on the thread pool.
#[castor_abi::task(thread)]
pub fn noop() {}

/// Does nothing but log one `tracing` line (which the worker stores in the task's log).
#[castor_abi::task(thread)]
pub fn noop_logged() {
    tracing::info!(answer = 42, "done");
}

/// The same line through `ctx.info` (the storage cost alone, without the capture).
#[castor_abi::task(thread)]
pub fn noop_ctx_logged(ctx: &castor_abi::TaskContext) {
    ctx.info("bench: done answer=42");
}

/// Does nothing, in a child process.
#[castor_abi::task(process)]
pub fn noop_process() {}

/// Burns the CPU for about `ms` milliseconds of arithmetic, in a child process.
#[castor_abi::task(process)]
pub fn spin(ms: u64) -> u64 {
    spin_for(ms)
}

/// The same work on the thread pool.
#[castor_abi::task(thread)]
pub fn spin_thread(ms: u64) -> u64 {
    spin_for(ms)
}

/// Sleeps for `ms` milliseconds on the thread pool: an attempt that takes time but no CPU.
#[castor_abi::task(thread)]
pub fn pause(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

fn spin_for(ms: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rounds = 0;
    while std::time::Instant::now() < deadline {
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        rounds += 1;
    }
    std::hint::black_box(x);
    rounds
}

castor_abi::manager!(
    /// The benchmark's manager: thread and process tasks.
    pub bench,
    db = "bench.db",
    tasks = [noop, noop_logged, noop_ctx_logged, noop_process, spin, spin_thread]
);

castor_abi::manager!(
    /// Thread tasks only (the quickstart's shape): its worker has no process lane.
    pub bench_threads,
    db = "bench.db",
    tasks = [noop, spin_thread, pause]
);

castor_abi::manager!(
    /// Process tasks only: its worker has no thread lane.
    pub bench_processes,
    db = "bench.db",
    tasks = [noop_process, spin]
);

castor_abi::export_managers!(bench, bench_threads, bench_processes);
