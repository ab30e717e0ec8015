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
];

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
    manifest["source"] = serde_json::json!({"kind": "inline", "files": []});
    serde_json::from_value(manifest).with_context(|| {
        format!(
            "{} needs name, runtime and handler",
            manifest_path.display()
        )
    })
}

/// The function's files under `dir` (relative path with `/`, path on disk), in path order,
/// without what `SKIPPED` names.
fn function_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if SKIPPED.contains(&name.as_str()) {
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
