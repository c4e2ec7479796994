//! Loads a task library: dlopen, the ABI check, and the managers it declares.
//!
//! Libraries are loaded with `lib_header_from_path(..).init_root_module()`, never with
//! `RootModule::load_from_file`, which caches one module per type per process and would
//! hand back the first library for every later path (abi_stable issue #92). Libraries are
//! never unloaded.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use abi_stable::abi_stability::abi_checking::{AbiInstability, check_layout_compatibility};
use abi_stable::library::{LibraryError, lib_header_from_path};
use abi_stable::std_types::RResult;
use abi_stable::type_layout::TLFieldOrFunction;
use castor_abi::abi::{ABI_VERSION, ManagerDecl, PluginRootRef, TaskDecl};

/// A library could not be used as a Castor plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Nothing exists at the path.
    #[error("no library at {path}")]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The file exists but the dynamic loader refused it.
    #[error("{path} is not a loadable shared library: {reason}")]
    NotALibrary {
        /// The path given.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// A shared library without Castor's root module.
    #[error(
        "{path} is a shared library but not a Castor plugin: it exports no castor root module \
         (a task library calls `castor_abi::export_managers!(..)` and is built with \
         crate-type = [\"cdylib\", \"rlib\"])"
    )]
    NotAPlugin {
        /// The path given.
        path: PathBuf,
    },
    /// Built against a castor-abi version this worker cannot load.
    #[error(
        "{path} was built against castor-abi {found}, which is incompatible with this castor \
         (castor-abi {expected}); rebuild the library against castor-abi {expected}"
    )]
    IncompatibleVersion {
        /// The path given.
        path: PathBuf,
        /// This worker's castor-abi version.
        expected: String,
        /// The library's castor-abi version.
        found: String,
    },
    /// Same version, different layout (or a different abi_stable).
    #[error(
        "{path} has an incompatible ABI: {summary}\nRebuild the library against the castor-abi \
         this castor was built with ({expected}); run with -v for abi_stable's full report"
    )]
    IncompatibleAbi {
        /// The path given.
        path: PathBuf,
        /// This worker's castor-abi version.
        expected: String,
        /// A short description of the first differences.
        summary: String,
        /// abi_stable's full report.
        details: String,
    },
    /// The library's manager declarations are invalid.
    #[error("{path}: invalid manager declaration: {message}")]
    Declaration {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The library does not export the requested manager.
    #[error("{path} has no manager named `{name}`; it exports: {}", available.join(", "))]
    UnknownManager {
        /// The path given.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// The names it exports.
        available: Vec<String>,
    },
}

/// A loaded library and the managers it declares.
pub struct Plugin {
    path: PathBuf,
    managers: Vec<ManagerDecl>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field(
                "managers",
                &self
                    .managers
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Plugin {
    /// Loads the library at `path` and checks its ABI.
    ///
    /// # Errors
    /// Every way a path can fail to be a usable plugin: see [`LoadError`].
    pub fn load(path: &Path) -> Result<Plugin, LoadError> {
        // dlopen searches the library path for a bare name; we mean this file.
        let path = path.canonicalize().map_err(|_| LoadError::NotFound {
            path: path.to_path_buf(),
        })?;
        let header = lib_header_from_path(&path).map_err(|e| library_error(&path, e))?;
        let root = header
            .init_root_module::<PluginRootRef>()
            .map_err(|e| match e {
                LibraryError::AbiInstability(_) => {
                    let found = header.layout();
                    let (summary, details) = match found.map(|found| {
                        check_layout_compatibility(
                            <PluginRootRef as abi_stable::StableAbi>::LAYOUT,
                            found,
                        )
                    }) {
                        Some(Err(errors)) => (summarize(&errors), errors.to_string()),
                        _ => ("the layouts differ".to_owned(), e.to_string()),
                    };
                    LoadError::IncompatibleAbi {
                        path: path.clone(),
                        expected: ABI_VERSION.to_owned(),
                        summary,
                        details,
                    }
                }
                other => library_error(&path, other),
            })?;
        let managers = match (root.managers())() {
            RResult::ROk(managers) => managers.into_vec(),
            RResult::RErr(message) => {
                return Err(LoadError::Declaration {
                    path,
                    message: message.into_string(),
                });
            }
        };
        check_declarations(&path, &managers)?;
        Ok(Plugin { path, managers })
    }

    /// The library's canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the manager called `name` out of the library.
    ///
    /// # Errors
    /// [`LoadError::UnknownManager`], listing the managers the library does export.
    pub fn into_manager(self, name: &str) -> Result<ManagerDecl, LoadError> {
        let available = self.managers.iter().map(|m| m.name.to_string()).collect();
        self.managers
            .into_iter()
            .find(|m| m.name.as_str() == name)
            .ok_or_else(|| LoadError::UnknownManager {
                path: self.path,
                name: name.to_owned(),
                available,
            })
    }
}

fn check_declarations(path: &Path, managers: &[ManagerDecl]) -> Result<(), LoadError> {
    let invalid = |message: String| LoadError::Declaration {
        path: path.to_path_buf(),
        message,
    };
    if managers.is_empty() {
        return Err(invalid("the library exports no managers".into()));
    }
    let mut names = HashSet::new();
    for manager in managers {
        if !names.insert(manager.name.as_str()) {
            return Err(invalid(format!(
                "two managers are named `{}`",
                manager.name
            )));
        }
        let mut tasks = HashSet::new();
        for task in manager.tasks.iter() {
            if !tasks.insert(task.name.as_str()) {
                return Err(invalid(format!(
                    "manager `{}` declares task `{}` twice",
                    manager.name, task.name
                )));
            }
            if task.max_attempts == 0 {
                return Err(invalid(format!("task `{}` allows 0 attempts", task.name)));
            }
        }
        let mut periodic = HashSet::new();
        for p in manager.periodic.iter() {
            if !periodic.insert(p.name.as_str()) {
                return Err(invalid(format!(
                    "two periodic tasks are named `{}`",
                    p.name
                )));
            }
            if !tasks.contains(p.task.as_str()) {
                return Err(invalid(format!(
                    "periodic task `{}` runs `{}`, which manager `{}` does not declare",
                    p.name, p.task, manager.name
                )));
            }
            if p.every_ms == 0 {
                p.cron
                    .as_str()
                    .parse::<castor_abi::cron::Cron>()
                    .map_err(|e| invalid(format!("periodic task `{}`: {e}", p.name)))?;
            }
        }
    }
    Ok(())
}

fn library_error(path: &Path, e: LibraryError) -> LoadError {
    let path = path.to_path_buf();
    match e {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary {
            path,
            reason: err.to_string(),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin { path },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::IncompatibleVersion {
            path,
            expected: expected_version.to_string(),
            found: actual_version.to_string(),
        },
        LibraryError::InvalidAbiHeader(header) => LoadError::IncompatibleAbi {
            path,
            expected: ABI_VERSION.to_owned(),
            summary: format!(
                "it was built with an incompatible abi_stable (its ABI header is {header:?})"
            ),
            details: String::new(),
        },
        other => LoadError::IncompatibleAbi {
            path,
            expected: ABI_VERSION.to_owned(),
            summary: first_line(&other.to_string()),
            details: other.to_string(),
        },
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_owned()
}

/// The differences abi_stable found, one short line each: where (the field path from the
/// root module) and what (expected vs found).
fn summarize(errors: &abi_stable::abi_stability::abi_checking::AbiInstabilityErrors) -> String {
    const MAX_LINES: usize = 4;
    let mut lines = Vec::new();
    for error in &errors.errors {
        // Keep the names a user wrote (`managers().tasks.timeout_ms`), not abi_stable's
        // plumbing (`0`, `buffer`, `__returns`, `field_0`).
        let path: Vec<String> = error
            .stack_trace
            .iter()
            .filter_map(|step| match &step.expected {
                TLFieldOrFunction::Field(field) => {
                    let name = field.name();
                    let plumbing = name.starts_with("__")
                        || name.starts_with("field_")
                        || name == "buffer"
                        || name.chars().all(|c| c.is_ascii_digit());
                    (!plumbing).then(|| name.to_owned())
                }
                TLFieldOrFunction::Function(function) => Some(format!("{}()", function.name)),
            })
            .collect();
        let mut path = path;
        // A field holding a function pointer appears as the field and as the function.
        path.dedup_by(|b, a| *b == format!("{a}()") || *a == format!("{b}()"));
        let place = if path.is_empty() {
            "the root module".to_owned()
        } else {
            format!("field `{}`", path.join("."))
        };
        for instability in &error.errs {
            lines.push(format!("{place}: {}", describe(instability)));
        }
    }
    let total = lines.len();
    lines.dedup();
    lines.truncate(MAX_LINES);
    if total > MAX_LINES {
        lines.push(format!("... and {} more difference(s)", total - MAX_LINES));
    }
    if lines.is_empty() {
        "the layouts differ".to_owned()
    } else {
        lines.join("; ")
    }
}

fn describe(instability: &AbiInstability) -> String {
    fn pair<T: fmt::Display>(
        what: &str,
        ef: &abi_stable::abi_stability::abi_checking::ExpectedFound<T>,
    ) -> String {
        format!("{what}: expected {}, found {}", ef.expected, ef.found)
    }
    fn pair_dbg<T: fmt::Debug>(
        what: &str,
        ef: &abi_stable::abi_stability::abi_checking::ExpectedFound<T>,
    ) -> String {
        format!("{what}: expected {:?}, found {:?}", ef.expected, ef.found)
    }
    match instability {
        AbiInstability::Name(ef) => pair("different type", ef),
        AbiInstability::Package(ef) => pair("different package", ef),
        AbiInstability::PackageVersion(ef) => pair("different package version", ef),
        AbiInstability::Size(ef) => pair("different size in bytes", ef),
        AbiInstability::Alignment(ef) => pair("different alignment", ef),
        AbiInstability::FieldCountMismatch(ef) => pair("different number of fields", ef),
        AbiInstability::UnexpectedField(ef) => {
            format!(
                "unexpected field: expected `{}`, found `{}`",
                ef.expected.name(),
                ef.found.name()
            )
        }
        AbiInstability::MismatchedPrimitive(ef) => pair_dbg("different primitive", ef),
        AbiInstability::TooManyVariants(ef) => pair("different number of variants", ef),
        AbiInstability::UnexpectedVariant(ef) => pair_dbg("unexpected variant", ef),
        other => {
            let text = format!("{other:?}");
            if text.len() > 160 {
                format!("{}...", &text[..text.floor_char_boundary(160)])
            } else {
                text
            }
        }
    }
}

/// `decl.tasks` as a list wrapped for the banner: `send_email (thread), resize (process)`,
/// continuation lines indented by `indent` columns.
pub fn describe_tasks(tasks: &[TaskDecl], indent: usize) -> String {
    const WIDTH: usize = 96;
    let mut text = String::new();
    let mut column = indent;
    for (i, t) in tasks.iter().enumerate() {
        let item = format!(
            "{} ({}){}",
            t.name,
            t.mode,
            if i + 1 < tasks.len() { "," } else { "" }
        );
        if column > indent && column + 1 + item.len() > WIDTH {
            text.push('\n');
            text.push_str(&" ".repeat(indent));
            column = indent;
        } else if column > indent {
            text.push(' ');
            column += 1;
        }
        column += item.len();
        text.push_str(&item);
    }
    text
}
