//! Castor's quickstart task library: one thread task, exported as manager `manager`.
//!
//! Built as a `cdylib` (the worker loads `libquickstart.so`) and as an `rlib` (the
//! `quickstart` app links it to dispatch `send_email` and join its result).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What `send_email` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    /// Who it went to.
    pub recipient: String,
    /// `sent`.
    pub status: String,
}

/// Pretends to send an email: takes about two seconds, like a slow mail server.
#[castor_abi::task(thread)]
pub fn send_email(recipient: String) -> Email {
    std::thread::sleep(Duration::from_secs(2));
    Email {
        recipient,
        status: "sent".into(),
    }
}

castor_abi::manager!(
    /// The quickstart's tasks, in `tasks.db` in the working directory.
    pub manager,
    db = "tasks.db",
    tasks = [send_email]
);

castor_abi::export_managers!(manager);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_email_is_still_a_plain_function() {
        let email = send_email("ada@example.com".into());
        assert_eq!(email.status, "sent");
        assert_eq!(email.recipient, "ada@example.com");
    }
}
