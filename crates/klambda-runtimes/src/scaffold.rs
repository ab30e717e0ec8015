//! A new function's starting point for each runtime (`klambda init`): a handler, a test the
//! language's own test tool runs, and a README, kept as files in `runtimes/<lang>/init/` (data,
//! like the shims) and embedded here. `{{name}}` and `{{runtime}}` in them become the function's
//! name and runtime id.

use klambda_events::{Language, Runtime};

/// What `klambda init` writes for one language, besides `klambda.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaffold {
    /// `klambda.json`'s `handler`.
    pub handler: &'static str,
    /// The language's own test command, run in the function's directory.
    pub test: &'static [&'static str],
    files: &'static [(&'static str, &'static str)],
}

const NODE: Scaffold = Scaffold {
    handler: "index.handler",
    test: &["node", "--test"],
    files: &[
        (
            "index.js",
            include_str!("../../../runtimes/nodejs/init/index.js"),
        ),
        (
            "index.test.js",
            include_str!("../../../runtimes/nodejs/init/index.test.js"),
        ),
        (
            "README.md",
            include_str!("../../../runtimes/nodejs/init/README.md"),
        ),
    ],
};

const PYTHON: Scaffold = Scaffold {
    handler: "app.handler",
    test: &["python3", "-m", "unittest"],
    files: &[
        (
            "app.py",
            include_str!("../../../runtimes/python/init/app.py"),
        ),
        (
            "test_app.py",
            include_str!("../../../runtimes/python/init/test_app.py"),
        ),
        (
            "README.md",
            include_str!("../../../runtimes/python/init/README.md"),
        ),
    ],
};

const GO: Scaffold = Scaffold {
    handler: "Handler",
    test: &["go", "test", "./..."],
    files: &[
        ("go.mod", include_str!("../../../runtimes/go/init/go.mod")),
        (
            "handler.go",
            include_str!("../../../runtimes/go/init/handler.go"),
        ),
        (
            "handler_test.go",
            include_str!("../../../runtimes/go/init/handler_test.go"),
        ),
        (
            "README.md",
            include_str!("../../../runtimes/go/init/README.md"),
        ),
    ],
};

const RUST: Scaffold = Scaffold {
    handler: "handler",
    test: &["cargo", "test", "--quiet"],
    files: &[
        (
            "Cargo.toml",
            include_str!("../../../runtimes/rust/init/Cargo.toml"),
        ),
        (
            "src/lib.rs",
            include_str!("../../../runtimes/rust/init/src/lib.rs"),
        ),
        (
            "README.md",
            include_str!("../../../runtimes/rust/init/README.md"),
        ),
        (
            ".cargo/config.toml",
            include_str!("../../../runtimes/rust/init/.cargo/config.toml"),
        ),
        // The runtime crate, for `cargo test` (the platform's build uses its own copy).
        (
            ".klambda/klambda-function/Cargo.toml",
            include_str!("../../../runtimes/rust/klambda-function/Cargo.toml"),
        ),
        (
            ".klambda/klambda-function/src/lib.rs",
            include_str!("../../../runtimes/rust/klambda-function/src/lib.rs"),
        ),
    ],
};

/// The scaffold of `runtime`'s language; `None` while the language has no template.
pub fn of(runtime: Runtime) -> Option<Scaffold> {
    match runtime.language() {
        Language::Node => Some(NODE),
        Language::Python => Some(PYTHON),
        Language::Go => Some(GO),
        Language::Rust => Some(RUST),
    }
}

/// Every runtime `klambda init` can start, in the catalogue's order.
pub fn runtimes() -> Vec<Runtime> {
    klambda_events::runtime::RUNTIMES
        .iter()
        .copied()
        .filter(|r| of(*r).is_some())
        .collect()
}

impl Scaffold {
    /// The files for function `name` of `runtime`: path and content.
    pub fn render(&self, name: &str, runtime: Runtime) -> Vec<(&'static str, String)> {
        self.files
            .iter()
            .map(|(path, text)| {
                let text = text
                    .replace("{{name}}", name)
                    .replace("{{runtime}}", runtime.id());
                (*path, text)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_with_a_build_template_has_a_scaffold_that_names_its_function() {
        let ids: Vec<&str> = runtimes().iter().map(|r| r.id()).collect();
        assert!(
            ids.contains(&"nodejs20") && ids.contains(&"python3.13"),
            "{ids:?}"
        );
        for runtime in runtimes() {
            assert!(crate::Template::of(runtime).is_ok(), "{}", runtime.id());
            let scaffold = of(runtime).unwrap_or_else(|| unreachable!());
            let files = scaffold.render("greeter", runtime);
            let readme = files
                .iter()
                .find(|(path, _)| *path == "README.md")
                .map(|(_, text)| text.as_str())
                .unwrap_or_default();
            assert!(
                readme.contains("# greeter") && readme.contains(runtime.id()),
                "{readme}"
            );
            assert!(
                files.iter().all(|(_, text)| !text.contains("{{")),
                "{files:?}"
            );
        }
    }
}
