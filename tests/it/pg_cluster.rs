//! A PostgreSQL cluster of a test's own (a throwaway one it creates, starts, restarts and
//! stops), on a Unix socket in its directory, and on request on TCP at 127.0.0.1 with
//! or without TLS; and the worker started on it.
//!
//! The cluster needs Debian's `postgresql` package (`initdb` and `pg_ctl` under
//! `/usr/lib/postgresql/*/bin`); as root they run as the `postgres` user.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{TestDir, Worker, castor_bin, tasks_target};

/// How a cluster listens.
pub enum Listen<'a> {
    /// On its Unix socket only (no TCP port to collide with).
    Socket,
    /// On its Unix socket and on TCP at 127.0.0.1 (a free port), with TLS (`ssl=on`) when
    /// a certificate is given, and the server settings `settings` (`-c name=value ..`).
    Tcp {
        tls: Option<&'a ServerCert>,
        settings: &'a str,
    },
}

/// A server's certificate and its private key, PEM files.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A PostgreSQL cluster of the test's own, without autovacuum (whose transactions would
/// count as the worker's), stopped and removed when dropped.
pub struct Cluster {
    /// The directory holding the data directory, the socket and the server's log.
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// The `-c` settings it runs with besides the common ones (TCP, TLS).
    settings: String,
}

impl Cluster {
    /// Creates and starts a cluster on its Unix socket only.
    pub fn start() -> Cluster {
        Cluster::start_with(Listen::Socket)
    }

    /// Creates and starts a cluster listening as `listen` says.
    pub fn start_with(listen: Listen<'_>) -> Cluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("initdb").is_file())
            .max()
            .unwrap_or_else(|| {
                panic!(
                    "PostgreSQL's initdb is missing under /usr/lib/postgresql: install Debian's \
                     postgresql package (as .ci/run does)"
                )
            });
        // Under /tmp: the socket's path must stay under the kernel's 107 bytes.
        let dir = PathBuf::from(format!(
            "/tmp/castor-pg-{}",
            castor_abi::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let (port, settings) = match listen {
            Listen::Socket => (5432, "-c listen_addresses=".to_owned()),
            Listen::Tcp {
                tls,
                settings: more,
            } => {
                let mut settings = format!("-c listen_addresses=127.0.0.1 {more}");
                if let Some(cert) = tls {
                    // The server reads its key only if no one else may (0600, its owner's).
                    let key = dir.join("server.key");
                    std::fs::copy(&cert.cert, dir.join("server.crt"))
                        .expect("copy the certificate");
                    std::fs::copy(&cert.key, &key).expect("copy the key");
                    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                        .expect("restrict the key");
                    settings.push_str(&format!(
                        " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                        dir.display()
                    ));
                }
                (free_port(), settings)
            }
        };
        let cluster = Cluster {
            dir,
            bin,
            port,
            settings,
        };
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&cluster.dir)
                .output()
                .expect("run chown");
            assert!(chown.status.success(), "chown: {chown:?}");
        }
        let data = cluster.data();
        cluster.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        cluster.pg_ctl(&["start"]);
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// The URL of the cluster's `postgres` database, on its Unix socket.
    pub fn url(&self) -> String {
        self.socket_url("postgres")
    }

    /// The URL of the cluster's database `dbname`, on its Unix socket.
    fn socket_url(&self, dbname: &str) -> String {
        format!(
            "postgres:///{dbname}?host={}&port={}&user=postgres",
            self.dir.display(),
            self.port
        )
    }

    /// The URL of the cluster's `postgres` database on TCP, by the name `host` (which must
    /// reach 127.0.0.1), with the query `query` (`sslmode=..`).
    pub fn tcp_url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }

    /// A connection on the Unix socket, as the server's superuser.
    pub fn admin(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).expect("connect on the socket")
    }

    /// Runs one of the server's programs (as the `postgres` user under root); panics with
    /// its output if it fails.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let output = command
            .args(args)
            .output()
            .expect("run a PostgreSQL program");
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
        output
    }

    /// `pg_ctl ACTION` on the cluster, waiting for it to finish; `start` and `restart`
    /// with the cluster's settings (its socket and port, TCP and TLS as started, no
    /// fsync).
    pub fn pg_ctl(&self, action: &[&str]) {
        let data = self.data();
        let log = self.dir.join("server.log").display().to_string();
        let options = format!(
            "-k {} -p {} {} -c fsync=off -c full_page_writes=off -c autovacuum=off",
            self.dir.display(),
            self.port,
            self.settings
        );
        let mut args = vec!["-D", &data, "-l", &log, "-w", "-o", &options];
        args.extend_from_slice(action);
        self.run("pg_ctl", &args);
    }

    /// The server's count of committed transactions in its `postgres` database, read
    /// from a connection to another database (`template1`), so that reading it adds
    /// nothing. The server publishes other sessions' counts within a second or so.
    pub fn commits(&self) -> i64 {
        let mut client = postgres::Client::connect(&self.socket_url("template1"), postgres::NoTls)
            .expect("connect");
        client
            .query_one(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'",
                &[],
            )
            .expect("read pg_stat_database")
            .get(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(if is_root() { "runuser" } else { "true" })
            .args(if is_root() {
                vec!["-u", "postgres", "--"]
            } else {
                vec![]
            })
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Starts `castor TARGET --db URL ARGS..` in `dir`.
pub fn worker(dir: &TestDir, url: &str, args: &[&str]) -> Worker {
    let mut command = Command::new(castor_bin());
    command
        .arg(tasks_target("manager"))
        .arg("--db")
        .arg(url)
        .args(args)
        .current_dir(dir.path());
    Worker::started(command)
}

/// A certificate authority of the test's own and a server certificate it issued, made
/// with the `openssl` command (Debian's `openssl` package, as .ci/run installs): EC
/// P-256 keys, valid for a day.
pub struct TestCa {
    /// The CA's certificate (what `sslrootcert` names).
    pub ca: PathBuf,
    /// The server's certificate, issued for the DNS name `localhost` only.
    pub server: ServerCert,
}

impl TestCa {
    /// Makes a CA named `name` and a server certificate for `localhost` in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let file = |suffix: &str| dir.join(format!("{name}-{suffix}"));
        let (ca, ca_key) = (file("ca.pem"), file("ca.key"));
        let (cert, key, csr, ext) = (
            file("server.pem"),
            file("server.key"),
            file("server.csr"),
            file("server.ext"),
        );
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509", "-days", "1"][..],
                &ec,
                &["-subj", &format!("/CN=castor test CA {name}")],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ],
            &[("-keyout", &ca_key), ("-out", &ca)],
        );
        openssl(
            &[&["req", "-new", "-subj", "/CN=localhost"][..], &ec],
            &[("-keyout", &key), ("-out", &csr)],
        );
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost\n",
        )
        .expect("write the extensions");
        openssl(
            &[&["x509", "-req", "-days", "1", "-set_serial", "2"][..]],
            &[
                ("-in", &csr),
                ("-CA", &ca),
                ("-CAkey", &ca_key),
                ("-extfile", &ext),
                ("-out", &cert),
            ],
        );
        TestCa {
            ca,
            server: ServerCert { cert, key },
        }
    }
}

/// Runs `openssl` with `args` and the file arguments `files`; panics with its output if
/// it fails.
fn openssl(args: &[&[&str]], files: &[(&str, &PathBuf)]) {
    let mut command = Command::new("openssl");
    for group in args {
        command.args(*group);
    }
    for (flag, path) in files {
        command.arg(flag).arg(path);
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run openssl ({e}): install Debian's openssl package (as .ci/run does)")
    });
    assert!(
        output.status.success(),
        "openssl {command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
