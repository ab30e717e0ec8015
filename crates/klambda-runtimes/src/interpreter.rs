//! The interpreter a runtime id asks for, found on this machine: `python3.13` runs on a Python
//! 3.13, `nodejs22` on a Node.js 22, or the build is refused saying what was found. On a
//! cluster the image pins the version; on one machine this is what keeps the promise.
//!
//! Where it looks, in order: the path `KLAMBDA_INTERPRETERS` names for the runtime id
//! (`python3.13=/opt/python3.13/bin/python3,nodejs22=/opt/node22/bin/node`), then
//! `python<version>` (Python only: Debian and others install `python3.13` beside `python3`), then
//! the runtime's own program (`python3`, `node`, `go`, `cargo`) on `PATH`, then (Go only) the toolchain
//! `scripts/services.sh` installs under [`TOOLS_DIR`]. Each candidate is asked its version.
//!
//! A Go runtime id names the oldest toolchain that may build it: `go1.24` builds with Go 1.24
//! or any later 1.x (Go compiles older language versions exactly; the function's `go.mod` `go`
//! line sets the language version), as a cluster's `golang:1.24` image would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use klambda_events::{Language, Runtime};

/// The setting naming interpreters by runtime id.
pub const INTERPRETERS: &str = "KLAMBDA_INTERPRETERS";

/// What the setting does, for the stages' `--help`.
pub const HELP: &str = "local: interpreters and toolchains by runtime id, id=path,… (python3.13=/opt/py/bin/python3, go1.24=/opt/go/bin/go); else python<version>, python3, node, go on PATH";

/// Where `scripts/services.sh` installs toolchains (`go/bin/go`): `KLAMBDA_TOOLS_DIR`, by default
/// `/var/tmp/knative-lambda/tools`.
pub const TOOLS_DIR: &str = "/var/tmp/knative-lambda/tools";

/// An interpreter that runs a runtime id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// Where it is.
    pub program: PathBuf,
    /// What it says its version is (`3.11.2`, `20.20.2`).
    pub version: String,
}

impl Interpreter {
    /// `Python 3.11.2`, `Node.js 20.20.2`.
    pub fn describe(&self, runtime: Runtime) -> String {
        let language = match runtime.language() {
            Language::Node => "Node.js",
            Language::Python => "Python",
            Language::Go => "Go",
            Language::Rust => "Rust",
        };
        format!("{language} {}", self.version)
    }
}

/// Why no interpreter was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpreterError {
    /// None of the candidates has the version the runtime id names.
    #[error(
        "{runtime} needs {wanted}; {found}. Install it, or name one with \
         {INTERPRETERS}={runtime}=/path/to/it"
    )]
    NotFound {
        /// The runtime id.
        runtime: String,
        /// What it needs (`Python 3.13`).
        wanted: String,
        /// What was found instead, or that nothing was.
        found: String,
    },
    /// `KLAMBDA_INTERPRETERS` is not `id=path` pairs separated by commas.
    #[error("{INTERPRETERS}: {0:?} is not runtime-id=path")]
    BadSetting(String),
}

/// The interpreter for `runtime`: `overrides` is the `KLAMBDA_INTERPRETERS` value (or empty),
/// `path` the `PATH` to search (the runner passes the directories a function's own user can
/// reach).
pub fn find(
    runtime: Runtime,
    overrides: &str,
    path: &str,
) -> Result<Interpreter, InterpreterError> {
    let (program, prefix, language) = match runtime.language() {
        Language::Node => ("node", "nodejs", "Node.js"),
        Language::Python => ("python3", "python", "Python"),
        Language::Go => ("go", "go", "Go"),
        Language::Rust => ("cargo", "rust", "Rust"),
    };
    let wanted = runtime.id().strip_prefix(prefix).unwrap_or_default();
    let mut candidates = Vec::new();
    for pair in overrides
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (id, program) = pair
            .split_once('=')
            .ok_or_else(|| InterpreterError::BadSetting(pair.to_owned()))?;
        if id.trim() == runtime.id() {
            candidates.push(PathBuf::from(program.trim()));
        }
    }
    let mut names = Vec::new();
    if runtime.language() == Language::Python {
        names.push(format!("python{wanted}"));
    }
    names.push(program.to_owned());
    for name in names {
        candidates.extend(on_path(&name, path));
    }
    if runtime.language() == Language::Go {
        let tools = std::env::var("KLAMBDA_TOOLS_DIR").unwrap_or_else(|_| TOOLS_DIR.to_owned());
        let installed = Path::new(&tools).join("go/bin/go");
        if is_executable(&installed) {
            candidates.push(installed);
        }
    }
    let mut found = Vec::new();
    for candidate in candidates {
        match version_of(runtime.language(), &candidate) {
            Some(version) if serves(runtime.language(), wanted, &version) => {
                return Ok(Interpreter {
                    program: candidate,
                    version,
                });
            }
            Some(version) => found.push(format!(
                "found {language} {version} at {}",
                candidate.display()
            )),
            None => found.push(format!("{} does not run", candidate.display())),
        }
    }
    found.dedup();
    Err(InterpreterError::NotFound {
        runtime: runtime.id().to_owned(),
        wanted: format!("{language} {wanted}"),
        found: if found.is_empty() {
            format!("no {program} on PATH")
        } else {
            found.join(", ")
        },
    })
}

/// The first executable `name` in the directories of `path`.
fn on_path(name: &str, path: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether a program of `version` serves a runtime id asking for `wanted`: the same version
/// (`3.13` for `3.13.1`), or for Go that version or a later one of the same major.
fn serves(language: Language, wanted: &str, version: &str) -> bool {
    if version == wanted || version.starts_with(&format!("{wanted}.")) {
        return true;
    }
    let numbers = |v: &str| -> Vec<u32> { v.split('.').map_while(|n| n.parse().ok()).collect() };
    let (wanted, found) = (numbers(wanted), numbers(version));
    language == Language::Go
        && wanted.len() == 2
        && found.len() >= 2
        && found[0] == wanted[0]
        && found[1] >= wanted[1]
}

/// What `program` says its version is, or `None` when it does not run.
fn version_of(language: Language, program: &Path) -> Option<String> {
    let args: &[&str] = match language {
        Language::Node => &["-p", "process.versions.node"],
        Language::Go => &["env", "GOVERSION"],
        Language::Rust => &["--version"],
        _ => &[
            "-c",
            "import sys; print('.'.join(map(str, sys.version_info[:3])))",
        ],
    };
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let version = String::from_utf8(output.stdout).ok()?;
    // `go env GOVERSION` says `go1.25.5`; `cargo --version` says `cargo 1.95.0 (… …)`.
    let version = match language {
        Language::Rust => version.split_whitespace().nth(1).unwrap_or_default(),
        _ => version.trim().trim_start_matches("go"),
    }
    .to_owned();
    (output.status.success() && !version.is_empty()).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(id: &str) -> Runtime {
        Runtime::find(id).unwrap_or_else(|| panic!("{id} is not a runtime"))
    }

    /// A fake interpreter in `dir` named `name` that says it is `version`.
    fn fake(dir: &Path, name: &str, version: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\necho {version}\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        path
    }

    #[test]
    fn a_go_runtime_id_is_served_by_that_toolchain_or_a_later_one() {
        let dir = std::env::temp_dir().join(format!("klambda-go-{}", std::process::id()));
        let go = fake(&dir, "go", "go1.25.5");
        let path = dir.display().to_string();
        let found = find(runtime("go1.24"), "", &path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((&found.program, found.version.as_str()), (&go, "1.25.5"));
        assert_eq!(found.describe(runtime("go1.24")), "Go 1.25.5");
        assert!(serves(Language::Go, "1.25", "1.25.5"));
        assert!(serves(Language::Go, "1.24", "1.26.0"));
        assert!(!serves(Language::Go, "1.25", "1.24.11"));
        assert!(!serves(Language::Go, "1.24", "2.0.0"));
        // Other languages take exactly the version named.
        assert!(!serves(Language::Python, "3.12", "3.13.1"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_version_the_id_names_is_found_or_the_deploy_is_refused_saying_what_is_there() {
        let dir = std::env::temp_dir().join(format!("klambda-interp-{}", std::process::id()));
        let bin = dir.join("bin");
        fake(&bin, "python3", "3.11.2");
        let newer = fake(&bin, "python3.13", "3.13.1");
        fake(&bin, "node", "20.20.2");
        let path = bin.display().to_string();

        let found = find(runtime("python3.13"), "", &path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(found.program, newer);
        assert_eq!(found.describe(runtime("python3.13")), "Python 3.13.1");
        assert_eq!(
            find(runtime("python3.11"), "", &path).map(|i| i.version),
            Ok("3.11.2".to_owned())
        );
        assert_eq!(
            find(runtime("nodejs20"), "", &path).map(|i| i.version),
            Ok("20.20.2".to_owned())
        );

        let refused = find(runtime("nodejs22"), "", &path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("nodejs22 needs Node.js 22"), "{refused}");
        assert!(refused.contains("found Node.js 20.20.2 at"), "{refused}");
        assert!(
            refused.contains("KLAMBDA_INTERPRETERS=nodejs22="),
            "{refused}"
        );

        // Named by the setting: found although not on PATH.
        let other = fake(&dir.join("opt"), "node", "22.3.0");
        let named = format!("python3.12=/nowhere, nodejs22={}", other.display());
        assert_eq!(
            find(runtime("nodejs22"), &named, &path).map(|i| i.program),
            Ok(other)
        );
        assert!(matches!(
            find(runtime("nodejs22"), "nodejs22", &path),
            Err(InterpreterError::BadSetting(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
