//! A function directory as a submission: its manifest and files, inline or uploaded to S3.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use base64::Engine as _;
use klambda_events::spec::{ContentEncoding, FunctionSubmission, InlineFile};
use klambda_runtimes::context::{Content, write_archive};
use klambda_storage::{ObjectStore, chunk_channel};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The files never packaged from a function directory.
const SKIPPED: &[&str] = &[
    "klambda.json",
    "node_modules",
    ".git",
    "__pycache__",
    ".deps",
    ".venv",
    // A Rust function's local build output and `cargo test` setup (`klambda init`): the
    // platform builds with its own.
    ".cargo",
    ".klambda",
];

/// Skipped at a function's top level where it has a `Cargo.toml`: Cargo's build output.
const CARGO_TARGET: &str = "target";

/// Reads `dir/klambda.json` and the function's files into a submission.
pub fn package(dir: &Path) -> Result<FunctionSubmission> {
    let mut submission = package_manifest(dir)?;
    let mut files = Vec::new();
    for (relative, path) in function_files(dir)? {
        let bytes = std::fs::read(&path)?;
        files.push(match String::from_utf8(bytes) {
            Ok(text) => InlineFile {
                path: relative,
                content: text,
                encoding: ContentEncoding::Utf8,
            },
            Err(e) => InlineFile {
                path: relative,
                content: base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                encoding: ContentEncoding::Base64,
            },
        });
    }
    submission.source = klambda_events::spec::SourceSubmission::Inline { files };
    Ok(submission)
}

/// The submission `dir/klambda.json` describes, with an empty inline source.
fn package_manifest(dir: &Path) -> Result<FunctionSubmission> {
    let manifest_path = dir.join("klambda.json");
    let manifest = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!(
            "{} is missing: a function directory needs a manifest with name, runtime and handler",
            manifest_path.display()
        )
    })?;
    let mut manifest: Value = serde_json::from_str(&manifest)
        .with_context(|| format!("{} is not valid JSON", manifest_path.display()))?;
    let problems = manifest_problems(&manifest);
    if !problems.is_empty() {
        anyhow::bail!(
            "{} is not a valid manifest ({}):\n  {}",
            manifest_path.display(),
            klambda_events::manifest::SCHEMA_PATH,
            problems.join("\n  ")
        );
    }
    if let Some(object) = manifest.as_object_mut() {
        object.remove("$schema");
    }
    manifest["source"] = serde_json::json!({"kind": "inline", "files": []});
    serde_json::from_value(manifest)
        .with_context(|| format!("{} is not a valid manifest", manifest_path.display()))
}

/// Every way `manifest` departs from `klambda.json`'s schema, one line each naming the key's
/// path and what is expected: unknown keys (with the keys that are known there), wrong types,
/// missing keys. All at once, so one edit fixes them all.
fn manifest_problems(manifest: &Value) -> Vec<String> {
    let schema = klambda_events::manifest::schema();
    let validator = match jsonschema::validator_for(&schema) {
        Ok(validator) => validator,
        Err(error) => return vec![format!("the manifest schema does not compile: {error}")],
    };
    let mut problems = Vec::new();
    for error in validator.iter_errors(manifest) {
        let at = key_path(error.instance_path().as_str());
        match error.kind() {
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                let parent = error
                    .schema_path()
                    .as_str()
                    .trim_end_matches("/additionalProperties")
                    .to_owned();
                let mut known: Vec<&str> = schema
                    .pointer(&format!("{parent}/properties"))
                    .and_then(Value::as_object)
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                known.retain(|key| *key != "$schema");
                for key in unexpected {
                    let path = if at.is_empty() {
                        key.clone()
                    } else {
                        format!("{at}.{key}")
                    };
                    problems.push(format!(
                        "{path}: unknown key; expected one of: {}",
                        known.join(", ")
                    ));
                }
            }
            _ => {
                let path = if at.is_empty() { "(top level)" } else { &at };
                problems.push(format!("{path}: {error}"));
            }
        }
    }
    problems
}

/// A JSON pointer as the key path a person reads: `/triggers/0/attributes` is
/// `triggers[0].attributes`.
fn key_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.bytes().all(|b| b.is_ascii_digit()) && !segment.is_empty() {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    path
}

/// The function's files under `dir` (relative path with `/`, path on disk), in path order,
/// without what `SKIPPED` names (nor a Rust function's `target/`).
fn function_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let cargo_output =
                dir == root && name == CARGO_TARGET && root.join("Cargo.toml").is_file();
            if SKIPPED.contains(&name.as_str()) || cargo_output {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(root, &path, out)?;
            } else if entry.file_type()?.is_file() {
                let relative = path
                    .strip_prefix(root)?
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((relative, path));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    Ok(files)
}

/// Packs the function in `dir` as a deterministic tar.gz, uploads it to `store` under
/// `sources/<sha256>.tar.gz` (once: the same files give the same key) and returns the
/// submission with that `s3://` source. Streams: the archive goes through a temporary file, not
/// memory.
pub async fn package_to_s3(dir: &Path, store: &dyn ObjectStore) -> Result<FunctionSubmission> {
    let mut submission = package_manifest(dir)?;
    let files = function_files(dir)?;
    let temp = std::env::temp_dir().join(format!("klambda-deploy-{}.tar.gz", std::process::id()));
    let digest = {
        let temp = temp.clone();
        tokio::task::spawn_blocking(move || -> Result<String> {
            let contents: Vec<(String, Content)> = files
                .into_iter()
                .map(|(path, file)| (path, Content::File(file)))
                .collect();
            let entries: Vec<(String, &Content)> =
                contents.iter().map(|(p, c)| (p.clone(), c)).collect();
            let mut out = Hashing {
                file: std::fs::File::create(&temp)?,
                hash: Sha256::new(),
            };
            write_archive(&entries, &mut out)?;
            Ok(hex::encode(out.hash.finalize()))
        })
        .await??
    };
    let key = format!("sources/{digest}.tar.gz");
    let uploaded = async {
        if store.head(&key).await?.is_none() {
            let (mut writer, chunks) = chunk_channel(16);
            let reader = {
                let temp = temp.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    std::io::copy(&mut std::fs::File::open(&temp)?, &mut writer)?;
                    writer.finish()
                })
            };
            store.put_stream(&key, chunks).await?;
            reader.await??;
        }
        anyhow::Ok(())
    };
    let result = uploaded.await;
    let _ = std::fs::remove_file(&temp);
    result.with_context(|| format!("uploading the source to {}", store.uri(&key)))?;
    submission.source = klambda_events::spec::SourceSubmission::S3 {
        url: store.uri(&key),
    };
    Ok(submission)
}

/// A writer that hashes what it writes.
struct Hashing {
    file: std::fs::File,
    hash: Sha256,
}

impl std::io::Write for Hashing {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.hash.update(&bytes[..written]);
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
