//! {{project-name}}'s background tasks, run by the `castor` worker.
//!
//! Built as a `cdylib` (the worker loads `lib{{crate_name}}.so`) and as an `rlib` (the
//! app in `src/main.rs` links it to dispatch tasks and join their results). Each
//! `#[castor_abi::task]` function stays a plain function, so tests can call it directly;
//! next to it appears a module of the same name with the typed `delay`.
#![warn(missing_docs)]

/// Greets someone. A thread task: it runs on the worker's thread pool, which suits
/// I/O-bound work such as calling an API or sending an email.
#[castor_abi::task(thread)]
pub fn greet(name: String) -> String {
    format!("Hello, {name}!")
}

/// Counts the primes below `limit`. A process task: CPU-bound or crash-prone work runs in
/// a child process of the worker, which is killed if an attempt takes longer than
/// `timeout`; a failed attempt is retried until `max_attempts` have run.
#[castor_abi::task(process, timeout = "30s", max_attempts = 3)]
pub fn count_primes(limit: u64) -> u64 {
    (2..limit).filter(|&n| is_prime(n)).count() as u64
}

/// Trial division; `d <= n / d` rather than `d * d <= n`, which overflows near `u64::MAX`.
fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|&d| d <= n / d)
            .all(|d| !n.is_multiple_of(d))
}

castor_abi::manager!(
    /// The tasks `castor lib{{crate_name}}.so:{{manager_name}}` runs, through `{{database}}`
    /// (relative to the working directory of the worker and of the app).
    pub {{manager_name}},
    db = "{{database}}",
    tasks = [greet, count_primes]
);

castor_abi::export_managers!({{manager_name}});

#[cfg(test)]
mod tests {
    use super::*;

    // Tasks are plain functions: no worker, no database.
    #[test]
    fn greet_greets_by_name() {
        assert_eq!(greet("Ada".into()), "Hello, Ada!");
    }

    #[test]
    fn count_primes_counts_the_primes_below_the_limit() {
        assert_eq!(count_primes(0), 0);
        assert_eq!(count_primes(10), 4);
        assert_eq!(count_primes(100_000), 9592);
    }
}
