//! Loads a task library: dlopen, the ABI check, and the managers it declares.
//!
//! Libraries are loaded with `lib_header_from_path(..).init_root_module()`, never with
//! `RootModule::load_from_file`, which caches one module per type per process and would
//! hand back the first library for every later path (abi_stable issue #92). Libraries are
//! never unloaded.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use abi_stable::abi_stability::abi_checking::{
    AbiInstability, AbiInstabilityErrors, ExpectedFound, check_layout_compatibility,
};
use abi_stable::library::{AbiHeader, LibHeader, LibraryError, RootModule, lib_header_from_path};
use abi_stable::std_types::RResult;
use abi_stable::type_layout::{DiscriminantRepr, ReprAttr, TLFieldOrFunction};
use castor_abi::abi::{AttachFn, ManagerDecl, PluginRootRef, TaskDecl};

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
    /// Built for a plugin ABI this worker cannot load: another plugin ABI version, or the
    /// same version from other (modified) sources.
    #[error("{}", incompatible_abi(path, library, worker, details.is_some()))]
    IncompatibleAbi {
        /// The path given.
        path: PathBuf,
        /// The plugin ABI version the library was built for.
        library: String,
        /// What this worker was built with (boxed: errors stay small).
        worker: Box<AbiBuild>,
        /// The differences one per line, then abi_stable's full report (printed with
        /// `-v`); `None` when the check stopped at the version numbers.
        details: Option<String>,
    },
    /// Built with another release of abi_stable, whose library header this worker cannot
    /// even read.
    #[error(
        "{path} was built with abi_stable ABI {found} (through its castor-abi), and this \
         castor with abi_stable ABI {expected} ({worker}): rebuild the library against \
         castor-abi {}", worker.castor_abi
    )]
    IncompatibleAbiStable {
        /// The path given.
        path: PathBuf,
        /// The library's abi_stable ABI version (`major.minor`).
        found: String,
        /// This worker's abi_stable ABI version.
        expected: String,
        /// What this worker was built with.
        worker: Box<AbiBuild>,
    },
    /// A Castor plugin whose root module could not be loaded for another reason (its
    /// version strings are malformed, or building the module failed).
    #[error("{path} exports a Castor root module that cannot be loaded: {reason}")]
    Unloadable {
        /// The path given.
        path: PathBuf,
        /// abi_stable's message, first line.
        reason: String,
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

impl LoadError {
    /// The same error naming `path` instead of the file loaded: with `--reload` the worker
    /// loads a private copy, and its errors name the file the operator gave.
    #[must_use]
    pub fn shown_as(mut self, shown: &Path) -> LoadError {
        let path = match &mut self {
            LoadError::NotFound { path }
            | LoadError::NotALibrary { path, .. }
            | LoadError::NotAPlugin { path }
            | LoadError::IncompatibleAbi { path, .. }
            | LoadError::IncompatibleAbiStable { path, .. }
            | LoadError::Unloadable { path, .. }
            | LoadError::Declaration { path, .. }
            | LoadError::UnknownManager { path, .. } => path,
        };
        let copy = path.display().to_string();
        *path = shown.to_path_buf();
        if let LoadError::NotALibrary { reason, .. } = &mut self {
            // The loader's message names the file it opened.
            *reason = reason.replace(&copy, &shown.display().to_string());
        }
        self
    }
}

/// A loaded library and the managers it declares.
pub struct Plugin {
    path: PathBuf,
    managers: Vec<ManagerDecl>,
    attach: AttachFn,
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
        let header = lib_header_from_path(&path).map_err(|e| library_error(&path, None, e))?;
        let root = header
            .init_root_module::<PluginRootRef>()
            .map_err(|e| library_error(&path, Some(header), e))?;
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
        Ok(Plugin {
            path,
            managers,
            attach: root.attach(),
        })
    }

    /// The library's canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The library's `attach`, which forwards its `log` and `tracing` records to a
    /// worker's services.
    pub fn attach(&self) -> AttachFn {
        self.attach
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
                    .parse::<castor_store::cron::Cron>()
                    .map_err(|e| invalid(format!("periodic task `{}`: {e}", p.name)))?;
            }
        }
    }
    Ok(())
}

/// What this worker was built with, in the words a user fixes a mismatch with: the
/// castor-abi release (what a library's Cargo.toml names) and the plugin ABI version
/// (what the load check compares). The two are independent: a release that changes no
/// ABI type keeps the plugin ABI version, and libraries built for it keep loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbiBuild {
    /// castor-abi's crate version (`0.1.0`).
    pub castor_abi: String,
    /// The plugin ABI version: the root module's version strings, which abi_stable
    /// compares first ([`castor_abi::abi::ABI_VERSION`]).
    pub abi: String,
}

impl AbiBuild {
    /// What this worker was built with.
    pub fn worker() -> AbiBuild {
        AbiBuild {
            castor_abi: castor_abi::VERSION.to_owned(),
            abi: <PluginRootRef as RootModule>::VERSION_STRINGS
                .version
                .to_string(),
        }
    }
}

impl fmt::Display for AbiBuild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "castor-abi {}, plugin ABI {}", self.castor_abi, self.abi)
    }
}

/// [`LoadError::IncompatibleAbi`]'s sentence: both plugin ABI versions, and what to
/// rebuild. A library records its plugin ABI version, not the castor-abi release it was
/// built against, so only the worker's release can be named.
fn incompatible_abi(path: &Path, library: &str, worker: &AbiBuild, has_details: bool) -> String {
    let path = path.display();
    let more = if has_details {
        " (castor -v shows the differences)"
    } else {
        ""
    };
    let castor_abi = &worker.castor_abi;
    if library == worker.abi {
        format!(
            "{path} was built for plugin ABI {library} like this castor (castor-abi \
             {castor_abi}), but from different sources whose layouts differ: rebuild the \
             library and castor from the same castor-abi{more}"
        )
    } else {
        format!(
            "{path} was built for plugin ABI {library}, which this castor (castor-abi \
             {castor_abi}, plugin ABI {}) cannot load: rebuild the library against castor-abi \
             {castor_abi}, or run it with a castor built for plugin ABI {library}{more}",
            worker.abi
        )
    }
}

/// The [`LoadError`] for a library abi_stable refused; `header` is the library's, once
/// it could be read.
fn library_error(path: &Path, header: Option<&LibHeader>, e: LibraryError) -> LoadError {
    let path = path.to_path_buf();
    let worker = Box::new(AbiBuild::worker());
    match (e, header) {
        (LibraryError::OpenError { err, .. }, _) => LoadError::NotALibrary {
            path,
            reason: err.to_string(),
        },
        (LibraryError::GetSymbolError { .. }, _) => LoadError::NotAPlugin { path },
        (LibraryError::InvalidAbiHeader(header), _) => LoadError::IncompatibleAbiStable {
            path,
            found: format!("{}.{}", header.abi_major, header.abi_minor),
            expected: format!(
                "{}.{}",
                AbiHeader::VALUE.abi_major,
                AbiHeader::VALUE.abi_minor
            ),
            worker,
        },
        (
            LibraryError::IncompatibleVersionNumber { .. } | LibraryError::AbiInstability(_),
            Some(header),
        ) => LoadError::IncompatibleAbi {
            path,
            library: header.version_strings().version.to_string(),
            details: header.layout().and_then(|found| {
                let expected = <PluginRootRef as abi_stable::StableAbi>::LAYOUT;
                check_layout_compatibility(expected, found)
                    .err()
                    .map(|errors| report(&errors))
            }),
            worker,
        },
        (other, _) => LoadError::Unloadable {
            path,
            reason: other
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        },
    }
}

/// What `castor -v` prints for an incompatible library: each difference on one line,
/// then abi_stable's full report.
fn report(errors: &AbiInstabilityErrors) -> String {
    let mut text = String::from("differences:\n");
    for line in differences(errors) {
        text.push_str("  ");
        text.push_str(&line);
        text.push('\n');
    }
    text.push_str("\nabi_stable's report:\n");
    text.push_str(&errors.to_string());
    text
}

/// The differences abi_stable found, once each: where (the field path from the root
/// module, in the names a user wrote) and what (expected vs found).
fn differences(errors: &AbiInstabilityErrors) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut lines = Vec::new();
    for error in &errors.errors {
        // Keep the names a user wrote (`managers().tasks.timeout_ms`), not abi_stable's
        // plumbing (`0`, `buffer`, `__returns`, `field_0`, `param_1`, unnamed parameters).
        let mut path: Vec<String> = error
            .stack_trace
            .iter()
            .filter_map(|step| match &step.expected {
                TLFieldOrFunction::Field(field) => {
                    let name = field.name();
                    let plumbing = name.starts_with("__")
                        || name.starts_with("field_")
                        || name.starts_with("param_")
                        || name == "buffer"
                        || name.chars().all(|c| c.is_ascii_digit())
                        || !name.chars().all(|c| c.is_alphanumeric() || c == '_');
                    (!plumbing).then(|| name.to_owned())
                }
                TLFieldOrFunction::Function(function) => Some(format!("{}()", function.name)),
            })
            .collect();
        // A field holding a function pointer appears as the field and as the function.
        path.dedup_by(|b, a| *b == format!("{a}()") || *a == format!("{b}()"));
        let place = if path.is_empty() {
            "the root module".to_owned()
        } else {
            format!("field `{}`", path.join("."))
        };
        for instability in &error.errs {
            let line = format!("{place}: {}", describe(instability));
            if seen.insert(line.clone()) {
                lines.push(line);
            }
        }
    }
    lines
}

fn describe(instability: &AbiInstability) -> String {
    fn pair<T: fmt::Display>(what: &str, ef: &ExpectedFound<T>) -> String {
        format!("{what}: expected {}, found {}", ef.expected, ef.found)
    }
    fn pair_dbg<T: fmt::Debug>(what: &str, ef: &ExpectedFound<T>) -> String {
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
        AbiInstability::ReprAttr(ef) => format!(
            "different representation: expected {}, found {}",
            repr(ef.expected),
            repr(ef.found)
        ),
        AbiInstability::EnumDiscriminant(ef) => pair_dbg("different discriminant", ef),
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

/// A type's representation as its source spells it: `#[repr(u8)]`.
fn repr(attr: ReprAttr) -> String {
    let int = |d: DiscriminantRepr| format!("{d:?}").to_ascii_lowercase();
    match attr {
        ReprAttr::C => "#[repr(C)]".to_owned(),
        ReprAttr::Transparent => "#[repr(transparent)]".to_owned(),
        ReprAttr::Int(d) => format!("#[repr({})]", int(d)),
        ReprAttr::CAndInt(d) => format!("#[repr(C, {})]", int(d)),
        ReprAttr::Primitive => "a primitive".to_owned(),
        ReprAttr::OptionNonZero => "an Option of a non-zero type".to_owned(),
        other => format!("{other:?}"),
    }
}

/// `decl.tasks` as a list for the banner: `send_email (thread), resize (process)`.
pub fn describe_tasks(tasks: &[TaskDecl]) -> String {
    tasks
        .iter()
        .map(|t| format!("{} ({})", t.name, t.mode))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(castor_abi: &str, abi: &str) -> AbiBuild {
        AbiBuild {
            castor_abi: castor_abi.into(),
            abi: abi.into(),
        }
    }

    #[test]
    fn the_worker_reports_its_castor_abi_release_and_its_plugin_abi_apart() {
        assert_eq!(
            AbiBuild::worker(),
            build(castor_abi::VERSION, castor_abi::abi::ABI_VERSION)
        );
    }

    #[test]
    fn the_refusal_names_both_plugin_abis_and_the_release_to_rebuild_against() {
        let path = Path::new("/x/libapp.so");
        assert_eq!(
            incompatible_abi(path, "0.2.0", &build("0.5.0", "0.1.0"), true),
            "/x/libapp.so was built for plugin ABI 0.2.0, which this castor (castor-abi \
             0.5.0, plugin ABI 0.1.0) cannot load: rebuild the library against castor-abi \
             0.5.0, or run it with a castor built for plugin ABI 0.2.0 (castor -v shows the \
             differences)"
        );
        assert_eq!(
            incompatible_abi(path, "0.1.0", &build("0.5.0", "0.1.0"), false),
            "/x/libapp.so was built for plugin ABI 0.1.0 like this castor (castor-abi 0.5.0), \
             but from different sources whose layouts differ: rebuild the library and castor \
             from the same castor-abi"
        );
    }

    #[test]
    fn representations_read_as_source() {
        assert_eq!(repr(ReprAttr::Int(DiscriminantRepr::U8)), "#[repr(u8)]");
        assert_eq!(
            repr(ReprAttr::CAndInt(DiscriminantRepr::I32)),
            "#[repr(C, i32)]"
        );
        assert_eq!(repr(ReprAttr::C), "#[repr(C)]");
    }
}
