//! `plugin-template` through the real `cargo generate`: the generated library builds
//! against this repository's castor-abi, passes its own unit tests, and the real `castor`
//! runs its tasks for the generated app; a bad manager name is refused with a clear
//! message and a retry with a good one works.
//!
//! cargo-generate is found in `target/tools/bin` (where `.ci/run` installs it), then on
//! `PATH`, and installed into `target/tools` if it is in neither. The generated crate is
//! built in `target/template-build`, a stable directory, so later runs reuse its
//! compiled dependencies.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::support::{TestDir, Worker};

/// The cargo-generate release known to build on this toolchain (0.24 and later need a
/// newer rustc). `.ci/run` installs the same one.
const CARGO_GENERATE_VERSION: &str = "0.23.14";

#[test]
fn the_generated_library_runs_in_the_real_worker_for_the_generated_app() {
    let dir = TestDir::new();
    let castor_abi = workspace().join("castor-abi");
    let out = generate(
        dir.path(),
        &[&format!("castor_abi_path={}", castor_abi.display())],
    );
    assert_success("cargo generate", &out);
    let project = dir.path().join("myapp");

    let manifest = read(&project.join("Cargo.toml"));
    assert!(
        manifest.lines().any(|line| line.trim() == "[workspace]"),
        "the generated crate is not its own workspace root:\n{manifest}"
    );
    assert!(
        !manifest
            .lines()
            .any(|line| line.trim_start().starts_with("panic = \"abort\"")),
        "a panicking task would kill the worker:\n{manifest}"
    );
    let readme = read(&project.join("README.md"));
    for command in [
        "cargo build --release",
        "castor ./target/release/libmyapp.so:manager",
    ] {
        assert!(
            readme.contains(command),
            "README lacks {command:?}:\n{readme}"
        );
    }

    // The template has no lockfile: start from the workspace's, so the generated crate
    // builds the dependency versions this repository is tested with (cargo drops what
    // it does not need, which is why the builds below cannot pass `--locked`).
    std::fs::copy(workspace().join("Cargo.lock"), project.join("Cargo.lock"))
        .expect("copy the workspace's Cargo.lock");
    let target = workspace().join("target").join("template-build");
    for step in [
        &["build"][..],
        &["test"],
        // Until rendered the template is not Rust, so the workspace's fmt and clippy
        // never see it: check what users get.
        &["fmt", "--check"],
        &["clippy", "--all-targets", "--", "-D", "warnings"],
    ] {
        let out = cargo()
            .arg(step[0])
            .arg("--manifest-path")
            .arg(project.join("Cargo.toml"))
            .args(&step[1..])
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("run cargo");
        assert_success(
            &format!("cargo {} of the generated crate", step.join(" ")),
            &out,
        );
        if step[0] == "test" {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains("test result: ok. 2 passed"),
                "the generated unit tests did not run:\n{stdout}"
            );
        }
    }

    let library = target.join("debug").join("libmyapp.so");
    let worker = Worker::start(&dir, &format!("{}:manager", library.display()), &[]);
    let banner = worker.stdout();
    for needle in ["greet (thread)", "count_primes (process)"] {
        assert!(
            banner.contains(needle),
            "banner lacks {needle:?}:\n{banner}"
        );
    }
    // The app opens its manager's default database, `tasks.db` relative to its working
    // directory: run it in the test directory, whose `tasks.db` the worker was given.
    let app = Command::new(target.join("debug").join("myapp"))
        .arg("Ada")
        .current_dir(dir.path())
        .output()
        .expect("run the generated app");
    assert_success("the generated app", &app);
    let printed = String::from_utf8_lossy(&app.stdout);
    for line in ["greet: Hello, Ada!", "count_primes(100000): 9592"] {
        assert!(
            printed.lines().any(|l| l == line),
            "the app did not print {line:?}:\n{printed}"
        );
    }
    let stopped = worker.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    for task in ["greet", "count_primes"] {
        assert!(
            stopped.stdout.contains(&format!("completed  {task} ")),
            "the worker did not complete {task}:\n{}",
            stopped.stdout
        );
    }
}

#[test]
fn a_bad_manager_name_is_refused_clearly_and_a_retry_with_a_good_one_works() {
    let dir = TestDir::new();
    let project = dir.path().join("myapp");
    // Not an identifier: the placeholder's regex refuses it. A keyword or a task's name:
    // the template's pre-hook does.
    for (name, message) in [
        (
            "my-manager",
            "\"my-manager\" is not a valid value for manager_name",
        ),
        (
            "fn",
            "manager_name \"fn\" is a Rust keyword or the name of a task",
        ),
        (
            "greet",
            "manager_name \"greet\" is a Rust keyword or the name of a task",
        ),
    ] {
        let out = generate(dir.path(), &[&format!("manager_name={name}")]);
        assert!(
            !out.status.success(),
            "manager_name={name} was accepted:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "manager_name={name}:\n{stderr}");
        // cargo-generate creates the project folder before it checks the values, and a
        // leftover folder makes the retry fail ("Target directory already exists"). It
        // is empty: remove it, as the README tells users to.
        if project.exists() {
            std::fs::remove_dir(&project).expect("the failed run left only an empty folder");
        }
    }

    // Generated inside another Cargo workspace: the crate is still its own root.
    std::fs::write(dir.path().join("Cargo.toml"), "[workspace]\n").expect("write Cargo.toml");
    let out = generate(dir.path(), &["manager_name=jobs", "database=jobs.db"]);
    assert_success("cargo generate after a failed one", &out);
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
    // Without `castor_abi_path`, the published castor-abi.
    let manifest = read(&project.join("Cargo.toml"));
    assert!(
        manifest.lines().any(|l| l == "castor-abi = \"0.1\""),
        "{manifest}"
    );
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .arg("--manifest-path")
        .arg(project.join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert_success("cargo metadata of the generated crate", &out);
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    assert_eq!(
        metadata["workspace_root"].as_str().map(Path::new),
        Some(project.as_path())
    );
}

/// The repository root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("castor-host is inside the repository")
        .to_owned()
}

/// The cargo that runs this test.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into()))
}

/// `cargo generate --path plugin-template --name myapp` into `destination`, with
/// `--define` for each of `defines`, never prompting.
fn generate(destination: &Path, defines: &[&str]) -> Output {
    let mut command = Command::new(cargo_generate());
    command
        .arg("generate")
        .arg("--path")
        .arg(workspace().join("plugin-template"))
        .args(["--name", "myapp", "--silent", "--vcs", "none"])
        .arg("--destination")
        .arg(destination)
        // Plain messages: no colours, no backtraces under a user's RUST_BACKTRACE.
        .env("CLICOLOR", "0")
        .env_remove("CLICOLOR_FORCE")
        .env("RUST_LIB_BACKTRACE", "0");
    for define in defines {
        command.arg("--define").arg(define);
    }
    command.output().expect("run cargo-generate")
}

/// The cargo-generate binary, installed on first use if need be.
fn cargo_generate() -> &'static Path {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND.get_or_init(find_or_install_cargo_generate)
}

fn find_or_install_cargo_generate() -> PathBuf {
    let root = workspace().join("target").join("tools");
    let installed = root.join("bin").join("cargo-generate");
    if installed.is_file() {
        return installed;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = std::env::split_paths(&path)
        .map(|dir| dir.join("cargo-generate"))
        .find(|file| file.is_file())
    {
        return found;
    }
    // Straight to stderr, past the test harness's capture: this takes minutes.
    let _ = writeln!(
        std::io::stderr(),
        "template test: cargo-generate is neither in {} nor on PATH; installing \
         cargo-generate {CARGO_GENERATE_VERSION} into {} (a few minutes)",
        installed.display(),
        root.display()
    );
    let status = cargo()
        .args(["install", "--locked", "--root"])
        .arg(&root)
        .arg(format!("cargo-generate@{CARGO_GENERATE_VERSION}"))
        .status()
        .expect("run cargo install");
    assert!(
        status.success() && installed.is_file(),
        "could not install cargo-generate {CARGO_GENERATE_VERSION} ({status}): building it \
         needs pkg-config and OpenSSL's headers (on Debian: apt-get install pkg-config \
         libssl-dev); or install it yourself with `cargo install \
         cargo-generate@{CARGO_GENERATE_VERSION} --locked --root {}`",
        root.display()
    );
    installed
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
