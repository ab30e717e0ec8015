//! Runtime templates: what turns a function's source into a build context.
//!
//! The descriptors and shims live under `runtimes/` at the repository root and are embedded at
//! compile time, so a stage binary carries exactly the template version it advertises.
//!
//! # Layout
//! - [`Template`]: a runtime's descriptor and shim; the rendered Dockerfile.
//! - [`context`]: the build context as a deterministic tar.gz, streamed.
//! - [`archive`]: unpacking untrusted archives (sources, contexts) safely.
//! - [`scaffold`]: a new function's starting point per runtime (`klambda init`).

pub mod archive;
pub mod context;
pub mod interpreter;
pub mod scaffold;

use std::collections::BTreeMap;

use klambda_events::{Language, Runtime};
use serde::Deserialize;

/// Why a runtime has no usable template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The language has no template yet.
    #[error("runtime {0} has no build template yet (templates exist for Node.js and Python)")]
    Unsupported(&'static str),
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
}

const NODE_DESCRIPTOR: &str = include_str!("../../../runtimes/nodejs/runtime.json");
const NODE_SHIM: &str = include_str!("../../../runtimes/nodejs/shim.js");
const PYTHON_DESCRIPTOR: &str = include_str!("../../../runtimes/python/runtime.json");
const PYTHON_SHIM: &str = include_str!("../../../runtimes/python/shim.py");

/// A runtime's template.
#[derive(Debug, Clone)]
pub struct Template {
    runtime: Runtime,
    descriptor: Descriptor,
    shim: &'static str,
}

impl Template {
    /// The template of `runtime`.
    pub fn of(runtime: Runtime) -> Result<Self, TemplateError> {
        let (descriptor, shim) = match runtime.language() {
            Language::Node => (NODE_DESCRIPTOR, NODE_SHIM),
            Language::Python => (PYTHON_DESCRIPTOR, PYTHON_SHIM),
            Language::Go | Language::Rust => return Err(TemplateError::Unsupported(runtime.id())),
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
        })
    }

    /// The descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// The shim's file name and contents.
    pub fn shim(&self) -> (&str, &'static str) {
        (&self.descriptor.shim, self.shim)
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
    /// file. The handler is not in it: it is deployment configuration (`KLAMBDA_HANDLER`), so a
    /// changed handler redeploys the same image.
    pub fn dockerfile(&self, has_dependencies: bool) -> String {
        let exec = |argv: &[String]| serde_json::to_string(argv).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_and_python_runtime_has_a_consistent_template() {
        for runtime in klambda_events::runtime::RUNTIMES {
            match Template::of(*runtime) {
                Ok(template) => {
                    assert!(!template.image().is_empty());
                    assert!(template.dockerfile(true).contains("RUN ["));
                    assert!(!template.dockerfile(false).contains("RUN "));
                }
                Err(TemplateError::Unsupported(_)) => {
                    assert!(matches!(runtime.language(), Language::Go | Language::Rust));
                }
                Err(broken) => panic!("{broken}"),
            }
        }
    }
}
