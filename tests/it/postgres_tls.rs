//! TLS to PostgreSQL with libpq's `sslmode` and `sslrootcert`, on clusters of the tests'
//! own listening on 127.0.0.1 (one with `ssl=on` and a certificate a test CA issued for
//! `localhost`, one without TLS): the real worker and a real app run tasks over verified
//! TLS, and the server sees every connection encrypted; a server refusing TLS, a
//! certificate from another CA, one for another name and an unreadable `sslrootcert` are
//! each one clear, typed error.

use std::process::{Command, Output};

use castor_abi::postgres;
use castor_fixture_tasks as fx;
use castor_store::{
    CertificateFault, Database, OpenOptions, SslMode, Store, StoreError, TlsProblem,
};

use crate::pg_cluster::{Cluster, Listen, TestCa, worker};
use crate::support::{PATIENCE, TestDir, castor_bin, tasks_target};

/// Whether the server sees `client`'s session encrypted.
fn encrypted(client: &mut postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .expect("read pg_stat_ssl")
        .get(0)
}

/// A connection as castor's driver makes them (`castor_store::postgres::connect`, what an
/// app's `Client::connect_postgres` calls).
fn connect(url: &str) -> Result<postgres::Client, StoreError> {
    castor_store::postgres::connect(&Database::parse(url))
}

/// The TLS problem opening `url` fails with.
fn tls_problem(url: &str) -> TlsProblem {
    match Store::open(url, OpenOptions::app()) {
        Err(StoreError::Tls { problem, .. }) => problem,
        Err(other) => panic!("{url}: not a TLS error: {other}"),
        Ok(_) => panic!("{url}: opened"),
    }
}

/// `castor TARGET --db URL`, which must fail at once.
fn worker_refused(dir: &TestDir, url: &str) -> Output {
    let output = Command::new(castor_bin())
        .arg(tasks_target("manager"))
        .arg("--db")
        .arg(url)
        .current_dir(dir.path())
        .output()
        .expect("run castor");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    output
}

/// A worker and an app with `sslmode=verify-full&sslrootcert=ca.pem` run tasks, by
/// `delay` and by `delay_in` on the app's own connection, and the server saw every
/// connection castor made (the worker's, its `LISTEN`, the app's store and `LISTEN`, the
/// app's own) encrypted.
#[test]
fn a_worker_and_an_app_run_tasks_over_verified_tls() {
    let dir = TestDir::new();
    let ca = TestCa::new(dir.path(), "right");
    let cluster = Cluster::start_with(Listen::Tcp {
        tls: Some(&ca.server),
        settings: "",
    });
    let url = cluster.tcp_url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca.ca.display()),
    );
    let worker = worker(&dir, &url, &["--quiet", "--threads", "2"]);
    let client = fx::manager()
        .with_database(url.as_str())
        .open()
        .expect("open the app's client");
    let sum = fx::add::delay(&client, 2, 3)
        .expect("delay")
        .join(PATIENCE)
        .expect("join");
    assert_eq!(sum, 5);

    let mut app = client.connect_postgres().expect("the app's own connection");
    assert!(encrypted(&mut app), "the app's own connection is not TLS");
    let mut tx = app.transaction().expect("begin");
    let handle = fx::add::delay_in(&mut tx, &client, 4, 5).expect("delay_in");
    tx.commit().expect("commit");
    assert_eq!(handle.join(PATIENCE).expect("join"), 9);

    let sessions: Vec<(String, bool, String)> = cluster
        .admin()
        .query(
            "SELECT a.application_name, s.ssl, coalesce(s.version, '') \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name LIKE 'castor%' ORDER BY 1",
            &[],
        )
        .expect("read pg_stat_ssl")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let named = |name: &str| sessions.iter().filter(|s| s.0 == name).count();
    // The worker's connections; its LISTEN, the app's store and the app's LISTEN (named
    // as an app's).
    assert!(
        named("castor worker") >= 1 && named("castor app") >= 3,
        "{sessions:?}"
    );
    assert!(
        sessions
            .iter()
            .all(|(_, ssl, version)| *ssl && version.starts_with("TLSv1.")),
        "a session is not TLS: {sessions:?}"
    );
    let stopped = worker.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

/// On a server with TLS: a certificate another CA issued, and a name the certificate
/// does not hold under `verify-full`, are refused naming the server and why (by the
/// store and by the worker at start); `verify-ca` takes the second (it checks the issuer
/// only), `prefer` (the default) and `require` encrypt without checking, `disable` does
/// not encrypt.
#[test]
fn certificates_that_do_not_verify_are_refused_naming_the_server_and_why() {
    let dir = TestDir::new();
    let right = TestCa::new(dir.path(), "right");
    let other = TestCa::new(dir.path(), "other");
    let cluster = Cluster::start_with(Listen::Tcp {
        tls: Some(&right.server),
        settings: "",
    });
    let with = |host: &str, query: String| cluster.tcp_url(host, &query);

    let wrong_ca = with(
        "localhost",
        format!("sslmode=verify-full&sslrootcert={}", other.ca.display()),
    );
    let problem = tls_problem(&wrong_ca);
    let message = problem.to_string();
    assert!(
        matches!(
            &problem,
            TlsProblem::Certificate { host, mode: SslMode::VerifyFull, fault: CertificateFault::UnknownIssuer, .. }
                if host == "localhost"
        ) && message.contains("server localhost")
            && message.contains(&other.ca.display().to_string()),
        "{problem:?}: {message}"
    );
    let refused = worker_refused(&dir, &wrong_ca);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("the certificate of server localhost does not verify")
            && stderr.contains("is not signed by"),
        "{stderr}"
    );

    // The certificate is for `localhost`; 127.0.0.1 is the same server by another name.
    let wrong_name = with(
        "127.0.0.1",
        format!("sslmode=verify-full&sslrootcert={}", right.ca.display()),
    );
    let problem = tls_problem(&wrong_name);
    let message = problem.to_string();
    assert!(
        matches!(
            &problem,
            TlsProblem::Certificate { host, fault: CertificateFault::WrongName, .. }
                if host == "127.0.0.1"
        ) && message.contains("not issued for the name 127.0.0.1")
            && message.contains("localhost"),
        "{problem:?}: {message}"
    );
    for query in [
        format!("sslmode=verify-ca&sslrootcert={}", right.ca.display()),
        "sslmode=require".to_owned(),
        String::new(),
    ] {
        let url = with("127.0.0.1", query);
        let mut client = connect(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(encrypted(&mut client), "{url}");
    }
    let mut plain = connect(&with("localhost", "sslmode=disable".to_owned())).expect("connect");
    assert!(!encrypted(&mut plain), "sslmode=disable encrypted");
}

/// On a server without TLS: `require` and `verify-full` are refused, saying the server
/// does not accept TLS (by the store and by the worker at start); `prefer` connects
/// unencrypted. An unreadable `sslrootcert` is refused before anything connects.
#[test]
fn a_server_without_tls_is_refused_when_the_url_requires_it() {
    let dir = TestDir::new();
    let cluster = Cluster::start_with(Listen::Tcp {
        tls: None,
        settings: "",
    });
    let require = cluster.tcp_url("localhost", "sslmode=require");
    let problem = tls_problem(&require);
    assert!(
        matches!(
            &problem,
            TlsProblem::Refused { host, mode: SslMode::Require } if host.starts_with("localhost:")
        ),
        "{problem:?}"
    );
    let refused = worker_refused(&dir, &require);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("does not accept TLS connections, and sslmode=require requires TLS"),
        "{stderr}"
    );
    let ca = TestCa::new(dir.path(), "any");
    let verify = cluster.tcp_url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca.ca.display()),
    );
    assert!(
        matches!(
            tls_problem(&verify),
            TlsProblem::Refused {
                mode: SslMode::VerifyFull,
                ..
            }
        ),
        "{verify}"
    );
    let mut plain = connect(&cluster.tcp_url("localhost", "sslmode=prefer")).expect("connect");
    assert!(!encrypted(&mut plain));

    let missing = dir.path().join("missing-ca.pem");
    let unreadable = cluster.tcp_url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", missing.display()),
    );
    assert!(
        matches!(tls_problem(&unreadable), TlsProblem::RootCert { path, .. } if path == missing),
        "{unreadable}"
    );
    let refused = worker_refused(&dir, &unreadable);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot use sslrootcert={}: no such file",
            missing.display()
        )),
        "{stderr}"
    );
}

/// On a server whose TLS has nothing in common with castor's (TLS 1.2 with a CBC cipher
/// only, which rustls does not offer): `require` is refused, naming the server and the
/// handshake's failure; `prefer` connects again without TLS, as libpq does.
#[test]
fn a_failed_handshake_is_refused_under_require_and_passed_over_under_prefer() {
    let dir = TestDir::new();
    let ca = TestCa::new(dir.path(), "old");
    let cluster = Cluster::start_with(Listen::Tcp {
        tls: Some(&ca.server),
        settings: "-c ssl_max_protocol_version=TLSv1.2 -c ssl_ciphers=ECDHE-ECDSA-AES128-SHA",
    });
    let require = cluster.tcp_url("localhost", "sslmode=require");
    let problem = tls_problem(&require);
    assert!(
        matches!(&problem, TlsProblem::Handshake { host, .. } if host == "localhost"),
        "{problem:?}"
    );
    assert!(
        problem
            .to_string()
            .starts_with("the TLS handshake with server localhost failed: "),
        "{problem}"
    );
    let mut plain = connect(&cluster.tcp_url("localhost", "sslmode=prefer")).expect("connect");
    assert!(!encrypted(&mut plain));
}
