//! The quickstart app: dispatches `send_email`, prints its id, waits up to 5 s for the
//! result and prints it. Run a worker first:
//! `castor ./target/release/libquickstart.so:manager`.

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let recipient = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ada@example.com".to_owned());
    match run(recipient) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(recipient: String) -> Result<(), Box<dyn std::error::Error>> {
    // No global state: the app opens the manager explicitly.
    let tasks = quickstart::manager().open()?;
    let handle = quickstart::send_email::delay(&tasks, recipient)?;
    println!("dispatched send_email, task id {}", handle.id());
    let email = handle.join(Duration::from_secs(5))?;
    println!("result: {email:?}");
    Ok(())
}
