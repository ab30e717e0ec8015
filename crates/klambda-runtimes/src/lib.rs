//! Runtime templates: what turns a function's source into a build context.
//!
//! The descriptors and shims live under `runtimes/` at the repository root and are embedded at
//! compile time, so a stage binary carries exactly the template version it advertises.
//!
//! # Layout
//! - [`Template`]: a runtime's descriptor and shim; the rendered Dockerfile.
//! - [`context`]: the build context as a deterministic tar.gz, streamed.
//! - [`diagnostics`]: a compiler's errors read from a build's output.
//! - [`archive`]: unpacking untrusted archives (sources, contexts) safely.
//! - [`scaffold`]: a new function's starting point per runtime (`klambda init`).

pub mod archive;
pub mod context;
pub mod diagnostics;
pub mod interpreter;
pub mod scaffold;

use std::collections::BTreeMap;

use klambda_events::{Language, Runtime};
use serde::Deserialize;

/// Why a runtime has no usable template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The language has no template yet.
    #[error("runtime {0} has no build template yet")]
    Unsupported(&'static str),
    /// The function's source does not fit the template (a Go function without a module path, a
    /// Rust one without a package name).
    #[error("{0}")]
    Source(String),
    /// The embedded descriptor does not parse or lacks this runtime: a build defect.
    #[error("the template of {runtime} is broken: {reason}")]
    Broken {
        /// The runtime.
        runtime: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A per-file syntax check: `command` followed by the file's path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Check {
    /// The command.
    pub command: Vec<String>,
    /// The file extensions it applies to.
    pub extensions: Vec<String>,
}

/// `runtimes/<language>/runtime.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// `node` or `python`.
    pub language: String,
    /// Part of every content digest; must equal the runtime table's.
    pub template_version: String,
    /// Base image per runtime id.
    pub images: BTreeMap<String, String>,
    /// The file whose presence means dependencies must be installed.
    pub dependency_file: String,
    /// The install command, run in the function's directory.
    pub install: Vec<String>,
    /// The syntax check run on each source file before the build counts as done.
    pub check: Check,
    /// The shim's file name.
    pub shim: String,
    /// The container's start command.
    pub start: Vec<String>,
    /// A compiled runtime's build command (run from the context's root, with the container
    /// paths of the start command mapped the same way); empty for an interpreted one.
    #[serde(default)]
    pub build: Vec<String>,
    /// A compiled runtime's final image: the binary alone on a minimal base.
    #[serde(default)]
    pub run_image: Option<String>,
    /// Environment the build command runs with (locally; an image sets its own).
    #[serde(default)]
    pub build_env: BTreeMap<String, String>,
    /// Variables naming the build's caches: the local builder points each at a directory kept
    /// per runtime id and shared by every build of it, so a second function compiles only what
    /// is its own.
    #[serde(default)]
    pub build_caches: Vec<String>,
    /// How a failed build's output says dependencies could not be resolved (it contains one of
    /// these) rather than that the code did not compile.
    #[serde(default)]
    pub dependency_errors: Vec<String>,
}

const NODE_DESCRIPTOR: &str = include_str!("../../../runtimes/nodejs/runtime.json");
const NODE_SHIM: &str = include_str!("../../../runtimes/nodejs/shim.js");
const PYTHON_DESCRIPTOR: &str = include_str!("../../../runtimes/python/runtime.json");
const PYTHON_SHIM: &str = include_str!("../../../runtimes/python/shim.py");
const GO_DESCRIPTOR: &str = include_str!("../../../runtimes/go/runtime.json");
const GO_SHIM: &str = include_str!("../../../runtimes/go/main.go");
const RUST_DESCRIPTOR: &str = include_str!("../../../runtimes/rust/runtime.json");
const RUST_SHIM: &str = include_str!("../../../runtimes/rust/main/main.rs");
/// What a Rust build needs besides the rendered program, under the context's `runtime/`.
const RUST_FILES: &[(&str, &str)] = &[
    ("build.sh", include_str!("../../../runtimes/rust/build.sh")),
    (
        "main/Cargo.toml",
        include_str!("../../../runtimes/rust/main/Cargo.toml"),
    ),
    (
        "klambda-function/Cargo.toml",
        include_str!("../../../runtimes/rust/klambda-function/Cargo.toml"),
    ),
    (
        "klambda-function/src/lib.rs",
        include_str!("../../../runtimes/rust/klambda-function/src/lib.rs"),
    ),
];
/// What a Go build needs besides the rendered program, under the context's `runtime/`.
const GO_FILES: &[(&str, &str)] = &[
    ("build.sh", include_str!("../../../runtimes/go/build.sh")),
    (
        "function/go.mod",
        include_str!("../../../runtimes/go/function/go.mod"),
    ),
    (
        "function/function.go",
        include_str!("../../../runtimes/go/function/function.go"),
    ),
];

/// A runtime's template.
#[derive(Debug, Clone)]
pub struct Template {
    runtime: Runtime,
    descriptor: Descriptor,
    shim: &'static str,
    files: &'static [(&'static str, &'static str)],
}

impl Template {
    /// The template of `runtime`.
    pub fn of(runtime: Runtime) -> Result<Self, TemplateError> {
        let (descriptor, shim, files) = match runtime.language() {
            Language::Node => (NODE_DESCRIPTOR, NODE_SHIM, &[][..]),
            Language::Python => (PYTHON_DESCRIPTOR, PYTHON_SHIM, &[][..]),
            Language::Go => (GO_DESCRIPTOR, GO_SHIM, GO_FILES),
            Language::Rust => (RUST_DESCRIPTOR, RUST_SHIM, RUST_FILES),
        };
        let broken = |reason: String| TemplateError::Broken {
            runtime: runtime.id(),
            reason,
        };
        let descriptor: Descriptor =
            serde_json::from_str(descriptor).map_err(|e| broken(e.to_string()))?;
        if !descriptor.images.contains_key(runtime.id()) {
            return Err(broken(format!("no base image for {}", runtime.id())));
        }
        if descriptor.template_version != runtime.template_version() {
            return Err(broken(format!(
                "descriptor template version {} differs from the runtime table's {}",
                descriptor.template_version,
                runtime.template_version()
            )));
        }
        Ok(Self {
            runtime,
            descriptor,
            shim,
            files,
        })
    }

    /// The descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// The shim's file name and contents (as the template has it: a compiled runtime's is
    /// rendered per function, see [`Template::runtime_files`]).
    pub fn shim(&self) -> (&str, &'static str) {
        (&self.descriptor.shim, self.shim)
    }

    /// Whether functions of this runtime are compiled (built to a binary by
    /// [`Descriptor::build`]) rather than loaded by an interpreter.
    pub fn is_compiled(&self) -> bool {
        !self.descriptor.build.is_empty()
    }

    /// The files of the context's `runtime/` directory for a function with `handler` whose
    /// source holds `manifest` (its dependency file: `go.mod`, `Cargo.toml`): the shim and what
    /// the build needs, rendered where the runtime compiles the handler in (`{{handler}}`, Go's
    /// `{{module}}`, Rust's `{{package}}` and `{{crate}}`).
    pub fn runtime_files(
        &self,
        handler: &str,
        manifest: Option<&str>,
    ) -> Result<Vec<(String, String)>, TemplateError> {
        let unfit = |what: &str| TemplateError::Source(what.to_owned());
        let values: Vec<(&str, String)> = match self.runtime.language() {
            Language::Node | Language::Python => Vec::new(),
            Language::Go => {
                let module = manifest.and_then(go_module_path).ok_or_else(|| {
                    unfit("a Go function needs a go.mod naming its module (`module example.com/hello`)")
                })?;
                vec![
                    ("{{handler}}", handler.to_owned()),
                    ("{{module}}", module.to_owned()),
                ]
            }
            Language::Rust => {
                let package = manifest.and_then(cargo_package_name).ok_or_else(|| {
                    unfit("a Rust function needs a Cargo.toml naming its package (`[package] name = \"hello\"`)")
                })?;
                vec![
                    ("{{handler}}", handler.to_owned()),
                    ("{{crate}}", package.replace('-', "_")),
                    ("{{package}}", package.to_owned()),
                ]
            }
        };
        let render = |text: &str| {
            values.iter().fold(text.to_owned(), |text, (key, value)| {
                text.replace(key, value)
            })
        };
        let mut files = vec![(self.descriptor.shim.clone(), render(self.shim))];
        files.extend(
            self.files
                .iter()
                .map(|(path, text)| ((*path).to_owned(), render(text))),
        );
        Ok(files)
    }

    /// The base image.
    pub fn image(&self) -> &str {
        self.descriptor
            .images
            .get(self.runtime.id())
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The Dockerfile for a context whose function does (or does not) carry the dependency
    /// file. The handler is not in an interpreted runtime's: it is deployment configuration
    /// (`KLAMBDA_HANDLER`), so a changed handler redeploys the same image. A compiled runtime's
    /// is multi-stage: the build image runs [`Descriptor::build`], the final image holds the
    /// binary alone on [`Descriptor::run_image`].
    pub fn dockerfile(&self, has_dependencies: bool) -> String {
        let exec = |argv: &[String]| serde_json::to_string(argv).unwrap_or_default();
        if self.is_compiled() {
            let binary = self.descriptor.start.first().cloned().unwrap_or_default();
            return format!(
                "# Rendered from runtimes/{}/runtime.json (template {}); do not edit.\n\
                 FROM {} AS build\n\
                 COPY function/ /var/function/\n\
                 COPY runtime/ /var/runtime/\n\
                 WORKDIR /var/function\n\
                 RUN {}\n\
                 FROM {}\n\
                 COPY --from=build {binary} {binary}\n\
                 ENV PORT=8080\n\
                 USER 65532:65532\n\
                 EXPOSE 8080\n\
                 CMD {}\n",
                self.descriptor.language,
                self.descriptor.template_version,
                self.image(),
                exec(&self.descriptor.build),
                self.descriptor.run_image.as_deref().unwrap_or("scratch"),
                exec(&self.descriptor.start)
            );
        }
        let mut text = format!(
            "# Rendered from runtimes/{}/runtime.json (template {}); do not edit.\n\
             FROM {}\n\
             WORKDIR /var/task\n\
             COPY function/ /var/task/\n\
             COPY runtime/ /var/runtime/\n",
            self.descriptor.language,
            self.descriptor.template_version,
            self.image()
        );
        if has_dependencies {
            text.push_str(&format!("RUN {}\n", exec(&self.descriptor.install)));
        }
        text.push_str(&format!(
            "ENV KLAMBDA_FUNCTION_ROOT=/var/task PORT=8080\n\
             USER 65532:65532\n\
             EXPOSE 8080\n\
             CMD {}\n",
            exec(&self.descriptor.start)
        ));
        text
    }
}

/// The package name a `Cargo.toml` declares (`name` in `[package]`).
pub fn cargo_package_name(cargo_toml: &str) -> Option<&str> {
    let mut in_package = false;
    for line in cargo_toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if !in_package {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() == "name" {
            let name = value.trim().trim_matches('"');
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            return valid.then_some(name);
        }
    }
    None
}

/// The module path a `go.mod` declares.
pub fn go_module_path(go_mod: &str) -> Option<&str> {
    go_mod.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("module")?;
        let path = rest.split("//").next()?.trim().trim_matches('"');
        (rest.starts_with(char::is_whitespace) && !path.is_empty()).then_some(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_program_is_rendered_for_the_functions_module_and_handler() {
        let go = Template::of(Runtime::find("go1.24").unwrap_or_else(|| unreachable!()))
            .unwrap_or_else(|e| panic!("{e}"));
        let files = go
            .runtime_files(
                "Greet",
                Some("// a comment\nmodule \"example.com/greeter\" // trailing\n\ngo 1.24\n"),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let program = &files
            .iter()
            .find(|(p, _)| p == "main.go")
            .unwrap_or_else(|| unreachable!())
            .1;
        assert!(program.contains("fn \"example.com/greeter\""), "{program}");
        assert!(program.contains("= fn.Greet"), "{program}");
        assert!(!program.contains("{{"), "{program}");
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "main.go",
                "build.sh",
                "function/go.mod",
                "function/function.go"
            ]
        );
        let refused = go
            .runtime_files("Greet", None)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(refused.contains("needs a go.mod"), "{refused}");
        assert_eq!(
            go_module_path("module example.com/x\n"),
            Some("example.com/x")
        );
        assert_eq!(go_module_path("modules x\n"), None);
    }

    #[test]
    fn every_node_and_python_runtime_has_a_consistent_template() {
        for runtime in klambda_events::runtime::RUNTIMES {
            match Template::of(*runtime) {
                Ok(template) if template.is_compiled() => {
                    // Multi-stage: the build image runs the build, the binary alone is kept.
                    let dockerfile = template.dockerfile(false);
                    assert!(
                        dockerfile.contains(&format!("FROM {} AS build", template.image())),
                        "{dockerfile}"
                    );
                    assert!(dockerfile.contains("RUN [\"sh\""), "{dockerfile}");
                    assert!(dockerfile.contains("COPY --from=build "), "{dockerfile}");
                    assert!(dockerfile.contains("USER 65532:65532"), "{dockerfile}");
                    assert!(runtime.language().is_compiled());
                }
                Ok(template) => {
                    assert!(!template.image().is_empty());
                    assert!(template.dockerfile(true).contains("RUN ["));
                    assert!(!template.dockerfile(false).contains("RUN "));
                    assert!(!runtime.language().is_compiled());
                }
                Err(TemplateError::Unsupported(_)) => {
                    assert!(matches!(runtime.language(), Language::Rust));
                }
                Err(broken) => panic!("{broken}"),
            }
        }
    }
}
