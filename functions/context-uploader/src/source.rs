//! Fetching a function's source into a work directory: inline files stay in memory; `s3://`
//! archives (tar.gz, zip) are downloaded and unpacked with the archive limits; `s3://` prefixes
//! are downloaded object by object under the same path rules. What a source holds that is
//! unsafe or too big is a refusal (the function cannot be built: `build.failed` with the
//! reason); a store that fails is a retryable error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use klambda_events::data::Problem;
use klambda_events::spec::{ContentEncoding, Source};
use klambda_harness::HandlerError;
use klambda_runtimes::archive::{self, ArchiveError, Limits};
use klambda_runtimes::context::{Content, SourceFile};
use klambda_storage::S3Store;

/// What fetching found.
pub enum Fetched {
    /// The files, and the work directory holding those on disk (removed when dropped).
    Files(Vec<SourceFile>, Option<WorkDir>),
    /// The source cannot be built, and why.
    Refused(String),
}

/// A directory removed when dropped, so an abandoned fetch leaves nothing behind.
pub struct WorkDir(PathBuf);

impl WorkDir {
    fn new(root: &Path) -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = root.join(format!(
            "source-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where sources come from and where they are unpacked.
#[derive(Clone)]
pub struct Sources {
    /// The S3 client for `s3://` sources, if configured.
    pub s3: Option<S3Store>,
    /// Work directories go here.
    pub work: PathBuf,
    /// Bounds on what a source may expand to.
    pub limits: Limits,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            s3: None,
            work: std::env::temp_dir().join("klambda-sources"),
            limits: Limits::default(),
        }
    }
}

impl Sources {
    /// Fetches `source`.
    pub async fn fetch(&self, source: &Source) -> Result<Fetched, HandlerError> {
        match source {
            Source::Inline { files } => inline(files).map(|files| Fetched::Files(files, None)),
            Source::S3 { bucket, key } => {
                let Some(s3) = &self.s3 else {
                    return Ok(Fetched::Refused(format!(
                        "the source s3://{bucket}/{key} needs S3 storage; this platform stores locally (configure KLAMBDA_STORE=s3://…)"
                    )));
                };
                let s3 = s3.in_bucket(bucket);
                let work = WorkDir::new(&self.work).map_err(internal)?;
                let fetched = if key.is_empty() || key.ends_with('/') {
                    self.prefix(&s3, key, &work).await?
                } else {
                    self.archive(&s3, key, &work).await?
                };
                Ok(match fetched {
                    Ok(files) => Fetched::Files(files, Some(work)),
                    Err(reason) => {
                        Fetched::Refused(format!("the source s3://{bucket}/{key}: {reason}"))
                    }
                })
            }
            Source::Git { url, reference } => Ok(Fetched::Refused(format!(
                "git sources ({url} at {reference}) are not fetched by this platform yet; upload the source (klambda deploy does) or use an s3:// archive"
            ))),
        }
    }

    async fn archive(
        &self,
        s3: &S3Store,
        key: &str,
        work: &WorkDir,
    ) -> Result<Result<Vec<SourceFile>, String>, HandlerError> {
        let archive = work.0.join("source.archive");
        if s3
            .download_any(key, &archive)
            .await
            .map_err(unavailable)?
            .is_none()
        {
            return Ok(Err("no such object".into()));
        }
        let dest = work.0.join("src");
        let limits = self.limits;
        let unpacked = {
            let dest = dest.clone();
            tokio::task::spawn_blocking(move || archive::extract(&archive, &dest, &limits))
                .await
                .map_err(internal)?
        };
        match unpacked {
            Ok(paths) => Ok(Ok(on_disk(&dest, paths))),
            Err(ArchiveError::Io(error)) => Err(internal(error)),
            Err(refused) => Ok(Err(refused.to_string())),
        }
    }

    async fn prefix(
        &self,
        s3: &S3Store,
        prefix: &str,
        work: &WorkDir,
    ) -> Result<Result<Vec<SourceFile>, String>, HandlerError> {
        let objects = s3.list(prefix).await.map_err(unavailable)?;
        if objects.is_empty() {
            return Ok(Err("no objects under this prefix".into()));
        }
        if objects.len() > self.limits.max_files {
            return Ok(Err(format!("more than {} files", self.limits.max_files)));
        }
        let total: u64 = objects.iter().map(|(_, size)| size).sum();
        if total > self.limits.max_total_bytes {
            return Ok(Err(format!(
                "{total} bytes; at most {} are built",
                self.limits.max_total_bytes
            )));
        }
        let dest = work.0.join("src");
        let mut paths = Vec::new();
        for (key, _) in objects {
            let relative = &key[prefix.len()..];
            if relative.ends_with('/') {
                continue; // a "directory" marker object
            }
            let safe = match archive::safe_path(relative, &self.limits) {
                Ok(safe) => safe,
                Err(refused) => return Ok(Err(refused.to_string())),
            };
            let target = dest.join(&safe);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(internal)?;
            }
            s3.download_any(&key, &target).await.map_err(unavailable)?;
            paths.push(safe.to_string_lossy().into_owned());
        }
        paths.sort();
        Ok(Ok(on_disk(&dest, paths)))
    }
}

fn on_disk(dir: &Path, paths: Vec<String>) -> Vec<SourceFile> {
    paths
        .into_iter()
        .map(|path| SourceFile {
            content: Content::File(dir.join(&path)),
            path,
        })
        .collect()
}

fn inline(files: &[klambda_events::spec::InlineFile]) -> Result<Vec<SourceFile>, HandlerError> {
    files
        .iter()
        .map(|f| {
            let bytes = match f.encoding {
                ContentEncoding::Utf8 => f.content.as_bytes().to_vec(),
                // The parser validated the base64; a failure here is a corrupt event.
                ContentEncoding::Base64 => base64::engine::general_purpose::STANDARD
                    .decode(&f.content)
                    .map_err(|e| {
                        HandlerError::Invalid(vec![Problem::new(
                            format!("spec.source.files[{}].content", f.path),
                            format!("not valid base64: {e}"),
                        )])
                    })?,
            };
            Ok(SourceFile::in_memory(f.path.clone(), bytes))
        })
        .collect()
}

fn internal(error: impl std::fmt::Display) -> HandlerError {
    HandlerError::Internal(format!("fetching the source: {error}"))
}

fn unavailable(error: impl std::fmt::Display) -> HandlerError {
    HandlerError::Unavailable(error.to_string())
}
