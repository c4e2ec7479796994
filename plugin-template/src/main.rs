//! The {{project-name}} app: dispatches `greet` and `count_primes`, then joins both
//! results and prints them. Start a worker first, in the same directory (the database
//! `{{database}}` is relative to the working directory of each):
//! `castor ./target/release/lib{{crate_name}}.so:{{manager_name}}`.

use std::process::ExitCode;
use std::time::Duration;

/// The limit `count_primes` is dispatched with.
const PRIMES_BELOW: u64 = 100_000;

/// How long to wait for each result before giving up (the task keeps its place in the
/// queue: a later `join` on the same task id can still collect it).
const PATIENCE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{{project-name}}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let name = match std::env::args_os().nth(1) {
        None => "world".to_owned(),
        Some(arg) => arg
            .into_string()
            .map_err(|arg| format!("the name {} is not UTF-8", arg.display()))?,
    };
    // No global state: the app opens the manager's database and passes `tasks` around.
    let tasks = {{crate_name}}::{{manager_name}}().open()?;
    // Dispatch both before joining either, so the worker can run them side by side.
    let greeting = {{crate_name}}::greet::delay(&tasks, name)?;
    let primes = {{crate_name}}::count_primes::delay(&tasks, PRIMES_BELOW)?;
    println!("dispatched greet {}", greeting.id());
    println!("dispatched count_primes {}", primes.id());
    println!("greet: {}", greeting.join(PATIENCE)?);
    println!("count_primes({PRIMES_BELOW}): {}", primes.join(PATIENCE)?);
    Ok(())
}
