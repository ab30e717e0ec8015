//! The workspace's cross-function tests live in `tests/*.rs` beside this file; this library holds
//! what several of them share.

use anyhow::{Context as _, Result};
use klambda_test_support::http::post;

/// Invokes the function serving at `url` with a CloudEvent whose data is `{"name": name}`;
/// fails unless it answers 200, and returns its reply's data.
pub async fn invoke(url: &str, name: &str) -> Result<serde_json::Value> {
    let reply = post(
        &format!("{url}/"),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "invoke-1"),
            ("ce-source", "/tests"),
            ("ce-type", "com.example.hello"),
            ("content-type", "application/json"),
        ],
        serde_json::json!({ "name": name }).to_string(),
    )
    .await?;
    anyhow::ensure!(
        reply.status == 200,
        "{url} answered {}: {:?}",
        reply.status,
        reply.body
    );
    reply.json()
}

/// Posts `event` to `url` in binary mode, as the broker delivers it; the answer read whole.
pub async fn deliver(
    url: &str,
    event: &cloudevents::Event,
) -> Result<klambda_test_support::http::Reply> {
    let (headers, body) = klambda_harness::codec::encode_binary(event);
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    post(url, &headers, body).await
}

/// A fresh data directory for `test` under the system's temp dir (emptied if it exists).
pub fn data_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("klambda-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The embedded platform (what `klambda up` runs) for `test`, with the repository's Triggers,
/// `customize`d, served over HTTP as `klambda up` serves it.
pub async fn serve_embedded(
    test: &str,
    customize: impl FnOnce(klambda_cli::embedded::Settings) -> klambda_cli::embedded::Settings,
) -> Result<(
    klambda_cli::embedded::Platform,
    klambda_test_support::http::TestServer,
)> {
    let settings = customize(klambda_cli::embedded::Settings::new(
        data_dir(test),
        klambda_test_support::repo::root().join("eventing"),
    ));
    let platform = klambda_cli::embedded::Platform::start(&settings).await?;
    let server = klambda_test_support::http::TestServer::start(klambda_cli::server::router(
        platform.clone(),
    ))
    .await?;
    Ok((platform, server))
}

/// `klambda deploy examples/<example>` against `server` (with `store` for S3 sources); the
/// CLI's exit code.
pub async fn deploy_example(
    server: &klambda_test_support::http::TestServer,
    example: &str,
    store: Option<&klambda_storage::S3Store>,
) -> Result<i32> {
    klambda_cli::client::deploy(
        &klambda_cli::client::Api::new(&server.url("")),
        &klambda_test_support::repo::root()
            .join("examples")
            .join(example),
        klambda_cli::client::Output::Json,
        store.map(|s3| s3 as &dyn klambda_storage::ObjectStore),
    )
    .await
}

/// The metrics docs/METRICS.md documents, by exported name.
pub mod documented {
    use std::collections::{BTreeMap, BTreeSet};

    use anyhow::{Context as _, Result};
    use klambda_test_support::repo;

    /// One row of the table.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Metric {
        /// `counter`, `gauge` or `histogram`.
        pub kind: String,
        /// Each label with its fixed values, or an empty set when its values are open (`stage`,
        /// `trigger`, `runtime`, `event_type`, …).
        pub labels: BTreeMap<String, BTreeSet<String>>,
    }

    /// Every backticked word in `text`.
    fn quoted(text: &str) -> Vec<&str> {
        text.split('`').skip(1).step_by(2).collect()
    }

    /// Parses the table of docs/METRICS.md.
    pub fn metrics() -> Result<BTreeMap<String, Metric>> {
        let docs = std::fs::read_to_string(repo::root().join("docs/METRICS.md"))
            .context("docs/METRICS.md")?;
        let mut rows = BTreeMap::new();
        for line in docs.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split(" | ").collect();
            let [name, kind, labels, ..] = cells.as_slice() else {
                continue;
            };
            let name = name.trim_start_matches("| ").trim_matches('`').to_owned();
            let mut parsed = BTreeMap::new();
            // `label`: `v1` · `v2`, `label2`, …: a comma separates labels.
            for part in labels.split(", ").filter(|p| !p.trim().is_empty()) {
                let words = quoted(part);
                let Some((label, values)) = words.split_first() else {
                    continue;
                };
                parsed.insert(
                    (*label).to_owned(),
                    values.iter().map(|v| (*v).to_owned()).collect(),
                );
            }
            rows.insert(
                name,
                Metric {
                    kind: kind.trim().to_owned(),
                    labels: parsed,
                },
            );
        }
        Ok(rows)
    }

    /// A metric selected in a PromQL expression, with the literal label matchers on it.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Selector {
        /// The family (without `_bucket`, `_count`, `_sum`).
        pub family: String,
        /// `label` → the values an `=` or `=~` matcher names (alternatives of plain words).
        pub matchers: Vec<(String, Vec<String>)>,
    }

    /// The `klambda_…` metrics an expression selects, with their matchers.
    pub fn selectors(expr: &str) -> Vec<Selector> {
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let mut found = Vec::new();
        let mut rest = expr;
        while let Some(at) = rest.find("klambda_") {
            let preceded = rest[..at].chars().next_back().is_some_and(is_name);
            let tail = &rest[at..];
            let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
            let name = &tail[..end];
            rest = &tail[end..];
            if preceded {
                continue;
            }
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum")
                .to_owned();
            let mut matchers = Vec::new();
            if let Some(inner) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) {
                for matcher in inner.0.split(',') {
                    let (label, value, regex) = if let Some((l, v)) = matcher.split_once("=~") {
                        (l, v, true)
                    } else if let Some((l, v)) = matcher.split_once("!=") {
                        (l, v, false)
                    } else if let Some((l, v)) = matcher.split_once('=') {
                        (l, v, false)
                    } else {
                        continue;
                    };
                    let value = value.trim().trim_matches('"');
                    if matcher.contains("!=") || matcher.contains("!~") {
                        continue;
                    }
                    let values: Vec<String> = if regex {
                        value.split('|').map(str::to_owned).collect()
                    } else {
                        vec![value.to_owned()]
                    };
                    matchers.push((label.trim().to_owned(), values));
                }
            }
            found.push(Selector { family, matchers });
        }
        found
    }

    /// Problems with `expr` against the documented metrics: unknown families, labels a family
    /// does not have, values outside a label's fixed set.
    pub fn check(expr: &str, documented: &BTreeMap<String, Metric>) -> Vec<String> {
        let mut problems = Vec::new();
        for selector in selectors(expr) {
            let Some(metric) = documented.get(&selector.family) else {
                problems.push(format!(
                    "{} is not exported (docs/METRICS.md)",
                    selector.family
                ));
                continue;
            };
            for (label, values) in &selector.matchers {
                if label == "le" {
                    continue;
                }
                let Some(allowed) = metric.labels.get(label) else {
                    problems.push(format!("{} has no label {label}", selector.family));
                    continue;
                };
                for value in values {
                    let plain = value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !allowed.is_empty() && plain && !allowed.contains(value) {
                        problems.push(format!(
                            "{}{{{label}=\"{value}\"}} selects a value the code never exports (it exports {allowed:?})",
                            selector.family
                        ));
                    }
                }
            }
        }
        problems
    }
}

/// The workspace's build of binary `name` (next to the test binaries, in `<target>/<profile>`),
/// to start it as it ships.
pub fn workspace_binary(name: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .context("the test binary is not in <target>/<profile>/deps")?;
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is not built; `cargo test --workspace` builds every binary (or run `cargo build --workspace --bins`)",
        path.display()
    );
    Ok(path)
}
