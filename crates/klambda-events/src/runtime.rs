//! The runtimes a function can be written for, and the version of each runtime's build template.
//!
//! A runtime id names a language and its major version, AWS-Lambda style (`nodejs22`,
//! `python3.12`). The template version is part of every content digest: bumping it when a
//! runtime's Dockerfile or shim changes makes every function of that runtime rebuild once.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The language family of a runtime; it decides the handler form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// Node.js: handler `file.export`, e.g. `index.handler`.
    Node,
    /// Python: handler `module.function`, e.g. `app.handler` or `pkg.app.handler`.
    Python,
    /// Go: handler is an exported function of the function's package (not `main`), e.g.
    /// `Handler`.
    Go,
    /// Rust: handler is a public async function of the function's library crate, e.g. `handler`.
    Rust,
}

impl Language {
    /// Whether the handler is compiled into the image (so a changed handler is a new build).
    pub fn is_compiled(self) -> bool {
        matches!(self, Self::Go | Self::Rust)
    }
}

/// A known runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Runtime {
    id: &'static str,
    language: Language,
    template_version: &'static str,
}

/// Every runtime the platform builds, in the order documentation lists them.
pub const RUNTIMES: &[Runtime] = &[
    Runtime::known("nodejs20", Language::Node, "node-5"),
    Runtime::known("nodejs22", Language::Node, "node-5"),
    Runtime::known("python3.11", Language::Python, "python-6"),
    Runtime::known("python3.12", Language::Python, "python-6"),
    Runtime::known("python3.13", Language::Python, "python-6"),
    Runtime::known("go1.24", Language::Go, "go-1"),
    Runtime::known("go1.25", Language::Go, "go-1"),
    Runtime::known("rust1", Language::Rust, "rust-1"),
];

impl Runtime {
    const fn known(id: &'static str, language: Language, template_version: &'static str) -> Self {
        Self {
            id,
            language,
            template_version,
        }
    }

    /// Looks a runtime up by id; `None` for an unknown one.
    pub fn find(id: &str) -> Option<Self> {
        RUNTIMES.iter().copied().find(|r| r.id == id)
    }

    /// The runtime id, e.g. `nodejs22`.
    pub fn id(&self) -> &'static str {
        self.id
    }

    /// The runtime's language.
    pub fn language(&self) -> Language {
        self.language
    }

    /// The version of the runtime's build template (Dockerfile + shim), part of the digest.
    pub fn template_version(&self) -> &'static str {
        self.template_version
    }

    /// Every known runtime id, for error messages.
    pub fn known_ids() -> Vec<&'static str> {
        RUNTIMES.iter().map(|r| r.id).collect()
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id)
    }
}

impl Serialize for Runtime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id)
    }
}

impl<'de> Deserialize<'de> for Runtime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = Cow::<str>::deserialize(d)?;
        Runtime::find(&id).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown runtime {id:?}; known: {}",
                Runtime::known_ids().join(", ")
            ))
        })
    }
}

impl JsonSchema for Runtime {
    fn schema_name() -> Cow<'static, str> {
        "Runtime".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A known runtime id.",
            "type": "string",
            "enum": Runtime::known_ids(),
        })
    }
}
