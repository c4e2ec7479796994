//! `plugin-template` the way README.md's "Start your own task library" uses it: its command
//! sequence, run line by line with bash from the repository root, installs `castor`,
//! creates a crate outside the repository with `plugin-template/new.sh`, builds it, and
//! runs its app against the worker; the repository's files are untouched and nothing is
//! written outside the new crate. Bad values are refused clearly and leave nothing behind.
//!
//! The tests never install a tool: `bash tests/run.sh` (README's test command) puts
//! cargo-generate into `target/tools` first. The generated crate's dependencies are
//! compiled in `target/template-build` (Cargo's build directory), which later runs reuse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::SystemTime;

use crate::support::{TestDir, Worker};

/// README's sequence, line by line (without the comments), as this test runs it: each
/// line by `bash -c`, from the repository root and then from where `cd` went, with
/// `HOME` a fresh directory (so `~/myapp` is inside it) and `castor` installed into
/// another one that comes first on `PATH`.
const SEQUENCE: [&str; 6] = [
    "cargo install --locked --path castor-host",
    "bash plugin-template/new.sh ~/myapp",
    "cd ~/myapp",
    "cargo build --release",
    "castor ./target/release/libmyapp.so:manager",
    "./target/release/myapp Ada",
];

#[test]
fn the_readme_sequence_builds_a_crate_outside_the_repository_that_runs_in_the_worker() {
    require_cargo_generate();
    assert_eq!(
        readme_sequence(),
        SEQUENCE,
        "README.md's \"Start your own task library\" commands are not the ones this test runs"
    );
    let dir = TestDir::new();
    let sandbox = Sandbox::new(&dir);
    let before = snapshot(&workspace());
    let root_manifest = read(&workspace().join("Cargo.toml"));

    let [install, new, cd, build, worker, app] = SEQUENCE;
    // The installed castor is built into the checkout's `target/release`, next to the
    // optimised one the benchmark uses: build this unoptimised one elsewhere.
    let out = sandbox
        .command(install, &workspace())
        .env("CARGO_TARGET_DIR", template_build_dir().join("castor"))
        .output()
        .expect("run cargo install");
    assert_success(install, &out);
    assert!(
        sandbox.install.join("bin").join("castor").is_file(),
        "`{install}` installed no castor into CARGO_INSTALL_ROOT"
    );

    let out = sandbox.run(new, &workspace());
    assert_success(new, &out);
    let project = sandbox.home.join("myapp");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("created {}", project.display())),
        "{new} printed:\n{printed}"
    );
    let out = sandbox.run(&format!("{cd} && pwd"), &workspace());
    assert_success(cd, &out);
    let cwd = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(cwd, project);

    let manifest = read(&project.join("Cargo.toml"));
    let castor_abi = workspace().join("castor-abi");
    assert!(
        manifest.contains(&format!("path = '{}'", castor_abi.display())),
        "the new crate does not depend on this checkout's castor-abi:\n{manifest}"
    );
    assert!(
        !manifest
            .lines()
            .any(|line| line.trim_start().starts_with("panic = \"abort\"")),
        "a panicking task would kill the worker:\n{manifest}"
    );
    let readme = read(&project.join("README.md"));
    for command in [build, worker, "./target/release/myapp Ada"] {
        assert!(
            readme.contains(command),
            "the new crate's README lacks {command:?}:\n{readme}"
        );
    }

    let out = sandbox.run(build, &cwd);
    assert_success(build, &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("warning"),
        "the new crate builds with warnings:\n{stderr}"
    );
    // Not in README's sequence, but what the new crate's README promises and what users
    // run next: its unit tests pass (a release build reuses the dependencies built above),
    // and it is formatted and clippy-clean (until rendered, the template is not Rust, so
    // the repository's fmt and clippy never see it).
    for check in [
        "cargo test --release",
        "cargo fmt --check",
        "cargo clippy --release --all-targets -- -D warnings",
    ] {
        let out = sandbox.run(check, &cwd);
        assert_success(check, &out);
        if check.starts_with("cargo test") {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains("test result: ok. 2 passed"),
                "the new crate's unit tests did not run:\n{stdout}"
            );
        }
    }

    // `exec`: the worker replaces bash, so the test's Ctrl+C reaches it.
    let running = Worker::started(sandbox.command(&format!("exec {worker}"), &cwd));
    let banner = running.stdout();
    for needle in [
        "greet (thread)",
        "count_primes (process)",
        "database  tasks.db",
    ] {
        assert!(
            banner.contains(needle),
            "the worker's banner lacks {needle:?}:\n{banner}"
        );
    }
    let out = sandbox.run(app, &cwd);
    assert_success(app, &out);
    let printed = String::from_utf8_lossy(&out.stdout);
    for line in ["greet: Hello, Ada!", "count_primes(100000): 9592"] {
        assert!(
            printed.lines().any(|l| l == line),
            "the app did not print {line:?}:\n{printed}"
        );
    }
    let stopped = running.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    for task in ["greet", "count_primes"] {
        assert!(
            stopped.stdout.contains(&format!("completed  {task} ")),
            "the worker did not complete {task}:\n{}",
            stopped.stdout
        );
    }

    assert_eq!(
        read(&workspace().join("Cargo.toml")),
        root_manifest,
        "the repository's Cargo.toml changed"
    );
    let after = snapshot(&workspace());
    let changed: Vec<&PathBuf> = before
        .keys()
        .chain(after.keys())
        .filter(|path| before.get(*path) != after.get(*path))
        .collect();
    assert!(
        changed.is_empty(),
        "the sequence changed the repository's files: {changed:?}"
    );
    assert_eq!(
        entries(&sandbox.home),
        ["myapp"],
        "the sequence wrote outside the new crate"
    );
}

#[test]
fn new_sh_refuses_bad_values_clearly_leaves_nothing_behind_and_edits_no_other_manifest() {
    require_cargo_generate();
    let dir = TestDir::new();
    // A workspace with members around the new crate: cargo-generate lists a crate it
    // generates in such a manifest unless told not to (and then neither builds).
    let outer = "[workspace]\nmembers = [\"other\"]\n";
    std::fs::write(dir.path().join("Cargo.toml"), outer).expect("write Cargo.toml");
    let project = dir.path().join("myapp");
    let project_arg = project.to_str().expect("temporary paths are UTF-8");

    for (define, message) in [
        // Not an identifier: the placeholder's regex refuses it.
        (
            "manager_name=my-manager",
            "\"my-manager\" is not a valid value for manager_name",
        ),
        // A keyword or a task's name: the template's pre-hook does.
        (
            "manager_name=fn",
            "manager_name \"fn\" is a Rust keyword or the name of a task",
        ),
        (
            "manager_name=greet",
            "manager_name \"greet\" is a Rust keyword or the name of a task",
        ),
        // Cargo would resolve it from inside the new crate.
        (
            "castor_abi_path=castor-abi",
            "castor_abi_path \"castor-abi\" is relative",
        ),
    ] {
        let out = new_sh(&[project_arg, "-d", define]);
        assert_failure(define, &out, message);
        assert!(
            !project.exists(),
            "a refused {define} left {} behind",
            project.display()
        );
    }

    let inside = workspace().join("myapp");
    let out = new_sh(&[inside.to_str().expect("the checkout's path is UTF-8")]);
    assert_failure(
        "a folder inside the checkout",
        &out,
        "is inside the Castor checkout",
    );
    assert!(!inside.exists(), "{} was created", inside.display());

    let out = new_sh(&[
        project_arg,
        "-d",
        "manager_name=jobs",
        "-d",
        "database=jobs.db",
    ]);
    assert_success("new.sh after refused ones", &out);
    let lib = read(&project.join("src").join("lib.rs"));
    for needle in ["pub jobs,", "db = \"jobs.db\"", "export_managers!(jobs)"] {
        assert!(lib.contains(needle), "src/lib.rs lacks {needle:?}:\n{lib}");
    }
    let app = read(&project.join("src").join("main.rs"));
    assert!(app.contains("myapp::jobs().open()"), "{app}");
    let readme = read(&project.join("README.md"));
    assert!(
        readme.contains("castor ./target/release/libmyapp.so:jobs"),
        "{readme}"
    );
    assert_eq!(
        read(&dir.path().join("Cargo.toml")),
        outer,
        "new.sh edited the manifest of the workspace around the new crate"
    );
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .arg("--manifest-path")
        .arg(project.join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert_success("cargo metadata of the new crate", &out);
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    assert_eq!(
        metadata["workspace_root"].as_str().map(Path::new),
        Some(project.as_path()),
        "the new crate is not its own workspace root"
    );

    let out = new_sh(&[project_arg]);
    assert_failure(
        "an existing folder",
        &out,
        "already exists: choose a new folder",
    );

    // Once castor-abi is published, an empty path depends on the crates.io release.
    let published = dir.path().join("published");
    let out = new_sh(&[
        published.to_str().expect("temporary paths are UTF-8"),
        "-d",
        "castor_abi_path=",
    ]);
    assert_success("new.sh -d castor_abi_path=", &out);
    let manifest = read(&published.join("Cargo.toml"));
    assert!(
        manifest.lines().any(|l| l == "castor-abi = \"0.1\""),
        "{manifest}"
    );
}

/// The environment README's sequence runs in.
struct Sandbox {
    /// `HOME`: `~/myapp` is created here, and nothing else may be.
    home: PathBuf,
    /// `CARGO_INSTALL_ROOT`, whose `bin` comes first on `PATH`.
    install: PathBuf,
}

impl Sandbox {
    fn new(dir: &TestDir) -> Sandbox {
        let sandbox = Sandbox {
            home: dir.path().join("home"),
            install: dir.path().join("install"),
        };
        std::fs::create_dir(&sandbox.home).expect("create the sandbox's HOME");
        sandbox
    }

    /// `bash -c LINE` in `cwd`, never attached to a terminal.
    fn command(&self, line: &str, cwd: &Path) -> Command {
        let home = std::env::home_dir().expect("the test has a home directory");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(self.install.join("bin")).chain(std::env::split_paths(&path)),
        )
        .expect("PATH joins");
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(line)
            .current_dir(cwd)
            .env("HOME", &self.home)
            .env("PATH", path)
            .env("CARGO_INSTALL_ROOT", &self.install)
            // Cargo and rustup keep their own homes, which default to HOME's.
            .env(
                "CARGO_HOME",
                std::env::var_os("CARGO_HOME").unwrap_or_else(|| home.join(".cargo").into()),
            )
            .env(
                "RUSTUP_HOME",
                std::env::var_os("RUSTUP_HOME").unwrap_or_else(|| home.join(".rustup").into()),
            )
            // Intermediate build files go to a directory kept across runs; the final ones
            // stay where README says (`./target/release`).
            .env("CARGO_BUILD_BUILD_DIR", template_build_dir())
            // The sequence's two release builds without the optimiser: what is checked is
            // that they build and run, and unoptimised they compile in a third of the time
            // (SQLite's C code alone took 150 s at -O3 on the 2-core build machine).
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .stdin(Stdio::null());
        // As in a fresh container: no user name anywhere (the fresh HOME has no
        // .gitconfig either).
        for name in [
            "USER",
            "USERNAME",
            "NAME",
            "CARGO_NAME",
            "GIT_AUTHOR_NAME",
            "GIT_COMMITTER_NAME",
        ] {
            command.env_remove(name);
        }
        command
    }

    fn run(&self, line: &str, cwd: &Path) -> Output {
        self.command(line, cwd)
            .output()
            .unwrap_or_else(|e| panic!("run `{line}`: {e}"))
    }
}

/// The commands of the first `sh` block under README.md's "Start your own task library",
/// without their comments.
fn readme_sequence() -> Vec<String> {
    let readme = read(&workspace().join("README.md"));
    let section = readme
        .split_once("\n## Start your own task library\n")
        .expect("README.md has a \"Start your own task library\" section")
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("the section has an sh block")
        .0;
    block
        .lines()
        .map(|line| line.split_once(" #").map_or(line, |(command, _)| command))
        .map(|line| line.trim().to_owned())
        .filter(|line| !line.is_empty())
        .collect()
}

/// `bash plugin-template/new.sh ARGS..` from the repository root, never attached to a
/// terminal.
fn new_sh(args: &[&str]) -> Output {
    Command::new("bash")
        .arg("plugin-template/new.sh")
        .args(args)
        .current_dir(workspace())
        .stdin(Stdio::null())
        .output()
        .expect("run new.sh")
}

/// Fails the test, naming the setup command, if `bash tests/run.sh` has not installed
/// cargo-generate (tests never install tools). Looks where `plugin-template/new.sh` does.
fn require_cargo_generate() {
    let installed = workspace()
        .join("target")
        .join("tools")
        .join("bin")
        .join("cargo-generate");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).any(|dir| dir.join("cargo-generate").is_file());
    assert!(
        installed.is_file() || on_path,
        "cargo-generate is not installed (neither {} nor on PATH): run the tests with \
         `bash tests/run.sh`, which installs it into target/tools once",
        installed.display()
    );
}

/// Every file of the repository but `target/` and `.git/`, with its size and modification
/// time.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let listing =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
        for entry in listing {
            let entry = entry.expect("read a directory entry");
            let path = entry.path();
            if dir == root
                && ["target", ".git"]
                    .iter()
                    .any(|skip| entry.file_name() == *skip)
            {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("stat a repository file");
            if meta.is_dir() {
                pending.push(path);
            } else {
                let modified = meta.modified().expect("file systems here record mtimes");
                files.insert(path, (meta.len(), modified));
            }
        }
    }
    files
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("read a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// The repository root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("castor-host is inside the repository")
        .to_owned()
}

/// Where the generated crate's dependencies are compiled, kept across runs.
fn template_build_dir() -> PathBuf {
    workspace().join("target").join("template-build")
}

/// The cargo that runs this test.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into()))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "`{what}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_failure(what: &str, out: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "new.sh accepted {what}:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(message),
        "new.sh's refusal of {what} lacks {message:?}:\n{stderr}"
    );
}
