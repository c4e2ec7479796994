//! [`Database`]: where the tasks are, as one URL-like setting. The same string goes in
//! `manager!(.., db = ..)`, `Manager::with_database`, `castor --db` and the ABI's manager
//! declaration, and picks the driver.

use std::fmt;
use std::path::{Path, PathBuf};

/// A database setting: a SQLite file (`tasks.db`, `./data/tasks.db`,
/// `sqlite:///abs/path/tasks.db`, `sqlite://relative.db`) or a URL for another engine.
///
/// Converting a string never fails; a setting no driver takes (an unknown scheme, or an
/// engine this build leaves out) is kept as it is and refused when it is opened, with a
/// message that says what castor accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Database {
    /// A SQLite file; relative paths are relative to the working directory.
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL (kept as given; shown without its password).
    Postgres(String),
    /// A setting with a scheme castor does not know.
    Unknown(String),
}

impl Database {
    /// Reads a setting: `scheme://rest` picks the engine; anything else is a SQLite path.
    pub fn parse(setting: &str) -> Database {
        let Some((scheme, rest)) = setting.split_once("://") else {
            return Database::Sqlite(PathBuf::from(setting));
        };
        match scheme.to_ascii_lowercase().as_str() {
            // `sqlite:///abs/path.db` is an absolute path, `sqlite://rel.db` a relative one.
            "sqlite" | "file" => Database::Sqlite(PathBuf::from(rest)),
            "postgres" | "postgresql" => Database::Postgres(setting.to_owned()),
            _ => Database::Unknown(setting.to_owned()),
        }
    }

    /// The SQLite file, if this is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Database::Sqlite(path) => Some(path),
            _ => None,
        }
    }

    /// The setting as a string that [`Database::parse`] reads back to the same value: a
    /// SQLite path as it is (`sqlite://` and a path containing `://` keep the scheme), a
    /// URL with its password.
    pub fn to_setting(&self) -> String {
        match self {
            Database::Sqlite(path) => {
                let text = path.to_string_lossy();
                if text.contains("://") {
                    format!("sqlite://{text}")
                } else {
                    text.into_owned()
                }
            }
            Database::Postgres(url) | Database::Unknown(url) => url.clone(),
        }
    }

    /// Resolves a relative SQLite path against `dir` (what a worker does with the
    /// manager's declared path, so that a relative name means the same file to its
    /// child processes); other settings are returned as they are.
    pub fn relative_to(&self, dir: &Path) -> Database {
        match self {
            Database::Sqlite(path) if path.is_relative() => Database::Sqlite(dir.join(path)),
            other => other.clone(),
        }
    }
}

impl fmt::Display for Database {
    /// A SQLite file as its path; a URL without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) | Database::Unknown(url) => f.write_str(&redact(url)),
        }
    }
}

/// `scheme://user:secret@host/db` shown as `scheme://user:***@host/db`, and a password
/// given as a parameter (`?password=secret`, which the PostgreSQL client takes too) as
/// `password=***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let query = query.map(|query| {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => param.to_owned(),
            })
            .collect();
        format!("?{}", params.join("&"))
    });
    format!("{scheme}://{authority}{path}{}", query.unwrap_or_default())
}

/// How a PostgreSQL URL's connections use TLS: libpq's `sslmode` (`?sslmode=..`), with
/// its default, `prefer`. Unix-socket connections never use TLS (the server offers none
/// there), whatever the mode, as with libpq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, without verifying its certificate; else unencrypted.
    #[default]
    Prefer,
    /// TLS or no connection, without verifying the certificate (but as `VerifyCa` when
    /// `sslrootcert` names a file, as libpq does).
    Require,
    /// TLS, with a certificate signed by a trusted root (`sslrootcert`'s, else the
    /// system's); any host name.
    VerifyCa,
    /// TLS, with a certificate signed by a trusted root and issued for the host name the
    /// URL gives.
    VerifyFull,
}

impl SslMode {
    /// The mode's name in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Reads a mode's name as a URL gives it; `None` for a name castor does not take.
    pub fn parse(name: &str) -> Option<SslMode> {
        [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ]
        .into_iter()
        .find(|mode| mode.as_str() == name)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Database {
    fn from(setting: &str) -> Database {
        Database::parse(setting)
    }
}

impl From<String> for Database {
    fn from(setting: String) -> Database {
        Database::parse(&setting)
    }
}

impl From<&String> for Database {
    fn from(setting: &String) -> Database {
        Database::parse(setting)
    }
}

impl From<PathBuf> for Database {
    /// A path is always a SQLite file, whatever characters it holds.
    fn from(path: PathBuf) -> Database {
        Database::Sqlite(path)
    }
}

impl From<&Path> for Database {
    fn from(path: &Path) -> Database {
        Database::Sqlite(path.to_path_buf())
    }
}

impl From<&PathBuf> for Database {
    fn from(path: &PathBuf) -> Database {
        Database::Sqlite(path.clone())
    }
}

impl From<&Database> for Database {
    fn from(database: &Database) -> Database {
        database.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_pick_their_engine() {
        assert_eq!(
            Database::parse("tasks.db"),
            Database::Sqlite("tasks.db".into())
        );
        assert_eq!(
            Database::parse("./data/tasks.db"),
            Database::Sqlite("./data/tasks.db".into())
        );
        assert_eq!(
            Database::parse("sqlite:///var/lib/castor/tasks.db"),
            Database::Sqlite("/var/lib/castor/tasks.db".into())
        );
        assert_eq!(
            Database::parse("sqlite://rel.db"),
            Database::Sqlite("rel.db".into())
        );
        assert_eq!(
            Database::parse("postgres://u@h/db"),
            Database::Postgres("postgres://u@h/db".into())
        );
        assert_eq!(
            Database::parse("mysql://h/db"),
            Database::Unknown("mysql://h/db".into())
        );
    }

    #[test]
    fn settings_round_trip_and_hide_passwords() {
        for setting in ["tasks.db", "/abs/x.db", "postgres://u:pw@h:5432/db?x=1"] {
            assert_eq!(Database::parse(setting).to_setting(), setting);
        }
        let odd = Database::Sqlite("weird://name.db".into());
        assert_eq!(Database::parse(&odd.to_setting()), odd);
        assert_eq!(
            Database::parse("postgres://castor:hunter2@db.internal/tasks").to_string(),
            "postgres://castor:***@db.internal/tasks"
        );
        assert_eq!(
            Database::parse("postgres://castor@db/tasks").to_string(),
            "postgres://castor@db/tasks"
        );
        assert_eq!(
            Database::parse("postgres:///tasks?host=/tmp&password=hunter2&user=castor").to_string(),
            "postgres:///tasks?host=/tmp&password=***&user=castor"
        );
        assert_eq!(
            Database::parse("postgres://castor:pw@h:5432/db?sslmode=disable&password=x")
                .to_string(),
            "postgres://castor:***@h:5432/db?sslmode=disable&password=***"
        );
        assert_eq!(
            Database::parse("postgres://h/db?x=1").to_string(),
            "postgres://h/db?x=1"
        );
        assert_eq!(Database::parse("tasks.db").to_string(), "tasks.db");
    }
}
