//! Fetching a function's source into a work directory: inline files stay in memory; `s3://`
//! archives (tar.gz, zip) are downloaded and unpacked with the archive limits; `s3://` prefixes
//! are downloaded object by object under the same path rules; git repositories are fetched at
//! their ref (one commit, no history) with the git CLI, over https only, and their tree is
//! checked like an archive (no links, bounded size and file count); https archives are
//! downloaded with a size cap and must match the sha256 the source names. What a source holds that is
//! unsafe or too big is a refusal (the function cannot be built: `build.failed` with the
//! reason); a store that fails is a retryable error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use klambda_events::data::Problem;
use klambda_events::spec::{ContentEncoding, Source};
use klambda_harness::HandlerError;
use klambda_runtimes::archive::{self, ArchiveError, Limits};
use klambda_runtimes::context::{Content, SourceFile};
use klambda_storage::{ObjectStore, SourceBuckets};

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
    /// The store whose credentials read `s3://` sources, when it reaches S3
    /// ([`ObjectStore::source_buckets`]).
    pub store: Option<Arc<dyn ObjectStore>>,
    /// Work directories go here.
    pub work: PathBuf,
    /// Bounds on what a source may expand to.
    pub limits: Limits,
    /// The git transports allowed besides https (tests add `file`).
    pub git_protocols: Vec<String>,
    /// Whether archives may come over plain http (tests only; production is https only).
    pub http_archives: bool,
    /// Whether fetches may connect to loopback and private addresses (tests serve sources
    /// there; production never does, see [`crate::connect`]).
    pub private_addresses: bool,
    /// How long one git fetch or archive download may take.
    pub git_timeout: std::time::Duration,
    /// Made on the first archive download, shared by clones.
    https: std::sync::Arc<std::sync::OnceLock<HttpsClient>>,
}

/// The client archives are downloaded with.
type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<
        hyper_util::client::legacy::connect::HttpConnector<crate::connect::CheckedResolver>,
    >,
    http_body_util::Empty<bytes::Bytes>,
>;

impl Default for Sources {
    fn default() -> Self {
        Self {
            store: None,
            work: std::env::temp_dir().join("klambda-sources"),
            limits: Limits::default(),
            git_protocols: Vec::new(),
            http_archives: false,
            private_addresses: false,
            git_timeout: std::time::Duration::from_secs(300),
            https: std::sync::Arc::default(),
        }
    }
}

impl Sources {
    /// Users' buckets, when the store reaches S3.
    fn buckets(&self) -> Option<&dyn SourceBuckets> {
        self.store.as_deref()?.source_buckets()
    }

    /// Fetches `source`; a git or S3 source must arrive at `pinned`, the revision
    /// [`Sources::resolve`] found (else the fetch is retried).
    pub async fn fetch(
        &self,
        source: &Source,
        pinned: Option<&str>,
    ) -> Result<Fetched, HandlerError> {
        match source {
            Source::Inline { files } => inline(files).map(|files| Fetched::Files(files, None)),
            Source::S3 { bucket, key } => {
                let Some(buckets) = self.buckets() else {
                    return Ok(Fetched::Refused(format!(
                        "the source s3://{bucket}/{key} needs S3 storage; this platform stores locally (configure KLAMBDA_STORE=s3://…)"
                    )));
                };
                let work = WorkDir::new(&self.work).map_err(internal)?;
                let fetched = if key.is_empty() || key.ends_with('/') {
                    self.prefix(buckets, bucket, key, &work).await?
                } else {
                    self.archive(buckets, bucket, key, &work).await?
                };
                // What was read must be the revision the digest was pinned to: a source changed
                // in between is fetched again on the broker's retry, under its new digest.
                if let Some(pinned) = pinned {
                    let now = buckets.revision(bucket, key).await.map_err(unavailable)?;
                    if now.as_deref() != Some(pinned) {
                        return Err(HandlerError::Unavailable(format!(
                            "s3://{bucket}/{key} changed while it was fetched"
                        )));
                    }
                }
                Ok(match fetched {
                    Ok(files) => Fetched::Files(files, Some(work)),
                    Err(reason) => {
                        Fetched::Refused(format!("the source s3://{bucket}/{key}: {reason}"))
                    }
                })
            }
            Source::Archive { url, sha256 } => {
                let work = WorkDir::new(&self.work).map_err(internal)?;
                let archive = work.0.join("source.archive");
                let fetched = match self.download(url, sha256, &archive).await? {
                    Ok(()) => self.unpack(archive, &work).await?,
                    Err(reason) => Err(reason),
                };
                Ok(match fetched {
                    Ok(files) => Fetched::Files(files, Some(work)),
                    Err(reason) => Fetched::Refused(format!("the source {url}: {reason}")),
                })
            }
            Source::Git { url, reference } => {
                let work = WorkDir::new(&self.work).map_err(internal)?;
                Ok(match self.git(url, reference, pinned, &work).await? {
                    Ok(files) => Fetched::Files(files, Some(work)),
                    Err(reason) => {
                        Fetched::Refused(format!("the source {url} at {reference}: {reason}"))
                    }
                })
            }
        }
    }

    /// The HTTPS client for archives, made once: loading the system's root certificates is
    /// file I/O not worth repeating per download.
    fn https_client(&self) -> Result<&HttpsClient, HandlerError> {
        if let Some(client) = self.https.get() {
            return Ok(client);
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        // Connects only to addresses the source rules allow, whatever the name resolves to at
        // that instant.
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(
            crate::connect::CheckedResolver {
                private_allowed: self.private_addresses,
            },
        );
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(internal)?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(self.https.get_or_init(|| client))
    }

    /// Downloads `url` into `to`, streaming, at most `max_total_bytes`, and checks its sha256.
    /// Only https, unless tests allowed plain http. Refusals: an answer that says the archive is
    /// not there (4xx), a redirect, too big, another hash. Retryable: no answer, 5xx.
    async fn download(
        &self,
        url: &str,
        sha256: &str,
        to: &Path,
    ) -> Result<Result<(), String>, HandlerError> {
        use http_body_util::BodyExt as _;
        use sha2::Digest as _;
        use tokio::io::AsyncWriteExt as _;
        let uri: http::Uri = match url.parse() {
            Ok(uri) => uri,
            Err(error) => return Ok(Err(format!("not a URL: {error}"))),
        };
        if uri.scheme_str() != Some("https")
            && !(self.http_archives && uri.scheme_str() == Some("http"))
        {
            return Ok(Err("archives are downloaded over https only".into()));
        }
        let Some(host) = uri.host() else {
            return Ok(Err("the URL names no host".into()));
        };
        let port = uri.port_u16().unwrap_or(443);
        if let Err(reason) = crate::connect::checked_addresses(host, port, self.private_addresses)
            .await
            .map_err(|e| HandlerError::Unavailable(format!("resolving {host}: {e}")))?
        {
            return Ok(Err(reason));
        }
        let client = self.https_client()?;
        let fetch = async {
            let response = client
                .get(uri)
                .await
                .map_err(|e| HandlerError::Unavailable(format!("downloading {url}: {e}")))?;
            let status = response.status();
            if status.is_redirection() {
                return Ok(Err(format!(
                    "the server redirects ({status}); give the final URL"
                )));
            }
            if status.is_client_error() {
                return Ok(Err(format!("the server answered {status}")));
            }
            if !status.is_success() {
                return Err(HandlerError::Unavailable(format!(
                    "downloading {url}: the server answered {status}"
                )));
            }
            let mut body = response.into_body();
            let mut file = tokio::fs::File::create(to).await.map_err(internal)?;
            let mut hash = sha2::Sha256::new();
            let mut size = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame
                    .map_err(|e| HandlerError::Unavailable(format!("downloading {url}: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    size += data.len() as u64;
                    if size > self.limits.max_total_bytes {
                        return Ok(Err(format!(
                            "larger than {} bytes",
                            self.limits.max_total_bytes
                        )));
                    }
                    hash.update(&data);
                    file.write_all(&data).await.map_err(internal)?;
                }
            }
            file.flush().await.map_err(internal)?;
            let got = hex::encode(hash.finalize());
            Ok(if got == sha256 {
                Ok(())
            } else {
                Err(format!(
                    "the download's sha256 is {got}, the source names {sha256}; nothing was built"
                ))
            })
        };
        match tokio::time::timeout(self.git_timeout, fetch).await {
            Ok(result) => result,
            Err(_) => Err(HandlerError::Unavailable(format!(
                "downloading {url} took longer than {:?}",
                self.git_timeout
            ))),
        }
    }

    /// Runs one git command under the fetch rules (no prompts, no user or system config, a
    /// deadline). `Ok(Err(reason))` is a permanent refusal (a ref or repository that does not
    /// exist, a transport not allowed); network trouble is retryable.
    async fn run_git(
        &self,
        url: &str,
        args: &[String],
        cwd: &std::path::Path,
    ) -> Result<Result<std::process::Output, String>, HandlerError> {
        let mut command = tokio::process::Command::new("git");
        command
            .args(args)
            .current_dir(cwd)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_LFS_SKIP_SMUDGE", "1")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(self.git_timeout, command.output()).await {
            Err(_) => {
                return Err(HandlerError::Unavailable(format!(
                    "git {} did not finish within {:?}",
                    args.iter()
                        .find(|a| !a.starts_with('-') && !a.contains('='))
                        .map(String::as_str)
                        .unwrap_or("git"),
                    self.git_timeout
                )));
            }
            Ok(Err(error)) => return Err(internal(format!("running git: {error}"))),
            Ok(Ok(output)) => output,
        };
        if output.status.success() {
            return Ok(Ok(output));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
        let permanent = [
            "couldn't find remote ref",
            "not found",
            "does not appear to be a git repository",
            "not allowed",
            "invalid",
        ]
        .iter()
        .any(|needle| stderr.to_lowercase().contains(needle));
        if permanent {
            Ok(Err(format!("git could not fetch it: {said}")))
        } else {
            Err(HandlerError::Unavailable(format!(
                "git fetch of {url} failed: {said}"
            )))
        }
    }

    /// The options that pin a git fetch of `url` to its host's checked addresses, or why it may
    /// not be fetched (see [`crate::connect::git_pins`]).
    async fn git_pins(&self, url: &str) -> Result<Result<Vec<String>, String>, HandlerError> {
        crate::connect::git_pins(url, self.private_addresses)
            .await
            .map_err(|e| HandlerError::Unavailable(format!("resolving the host of {url}: {e}")))
    }

    /// The git transport flags: https only, plus the configured extra transports.
    fn git_protocols(&self) -> Vec<String> {
        let mut protocols = vec![
            "-c".to_owned(),
            "protocol.allow=never".to_owned(),
            "-c".to_owned(),
            "protocol.https.allow=always".to_owned(),
        ];
        for extra in &self.git_protocols {
            protocols.push("-c".into());
            protocols.push(format!("protocol.{extra}.allow=always"));
        }
        protocols
    }

    /// The revision a source's content is pinned to now, for sources named by something that
    /// can change under the same name: a git ref resolved with `git ls-remote` to a commit (a
    /// full commit id is taken as it is); an S3 object or prefix to its ETags (see
    /// `SourceBuckets::revision`). `Ok(Ok(None))` for sources whose digest already covers their
    /// content (inline, an archive pinned by its sha256), and for an S3 source with nothing
    /// there (the fetch refuses it). A ref that does not exist is a refusal.
    pub async fn resolve(
        &self,
        source: &Source,
    ) -> Result<Result<Option<String>, String>, HandlerError> {
        if let Source::S3 { bucket, key } = source {
            return Ok(Ok(match self.buckets() {
                Some(buckets) => buckets.revision(bucket, key).await.map_err(unavailable)?,
                None => None,
            }));
        }
        let Source::Git { url, reference } = source else {
            return Ok(Ok(None));
        };
        if reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Ok(Some(reference.to_ascii_lowercase())));
        }
        let pins = match self.git_pins(url).await? {
            Ok(pins) => pins,
            Err(reason) => return Ok(Err(format!("the source {url}: {reason}"))),
        };
        let work = WorkDir::new(&self.work).map_err(internal)?;
        let args = [
            self.git_protocols(),
            pins,
            vec![
                "ls-remote".into(),
                "--".into(),
                url.clone(),
                reference.clone(),
            ],
        ]
        .concat();
        let listed = match self.run_git(url, &args, &work.0).await? {
            Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
            Err(reason) => return Ok(Err(format!("the source {url}: {reason}"))),
        };
        // What `git fetch <ref>` would take: a branch, then a tag (peeled to its commit), then
        // the ref as written.
        let refs: Vec<(&str, &str)> = listed
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .collect();
        let find = |name: &str| refs.iter().find(|(_, r)| *r == name).map(|(c, _)| *c);
        let commit = find(&format!("refs/heads/{reference}"))
            .or_else(|| find(&format!("refs/tags/{reference}^{{}}")))
            .or_else(|| find(&format!("refs/tags/{reference}")))
            .or_else(|| find(reference));
        Ok(match commit {
            Some(commit) => Ok(Some(commit.to_owned())),
            None => Err(format!("the source {url}: no ref {reference:?}")),
        })
    }

    /// Fetches one commit of `url` at `reference` into the work directory. Only https (and the
    /// configured extra transports) may be used, with no prompts, no user or system git config,
    /// and a deadline. A ref that does not exist is a refusal; other failures (network) are
    /// retryable.
    async fn git(
        &self,
        url: &str,
        reference: &str,
        pinned: Option<&str>,
        work: &WorkDir,
    ) -> Result<Result<Vec<SourceFile>, String>, HandlerError> {
        let checkout = work.0.join("src");
        let protocols = match self.git_pins(url).await? {
            Ok(pins) => [self.git_protocols(), pins].concat(),
            Err(reason) => return Ok(Err(reason)),
        };
        let steps: [Vec<String>; 3] = [
            vec!["init".into(), "-q".into()],
            [
                protocols.clone(),
                vec![
                    "fetch".into(),
                    "-q".into(),
                    "--depth=1".into(),
                    "--no-tags".into(),
                    "--".into(),
                    url.into(),
                    reference.into(),
                ],
            ]
            .concat(),
            vec![
                "-c".into(),
                "core.symlinks=true".into(),
                "checkout".into(),
                "-q".into(),
                "--detach".into(),
                "FETCH_HEAD".into(),
            ],
        ];
        std::fs::create_dir_all(&checkout).map_err(internal)?;
        for args in steps {
            if let Err(reason) = self.run_git(url, &args, &checkout).await? {
                return Ok(Err(reason));
            }
        }
        if let Some(commit) = pinned {
            let head = match self
                .run_git(url, &["rev-parse".into(), "HEAD".into()], &checkout)
                .await?
            {
                Ok(output) => String::from_utf8_lossy(&output.stdout).trim().to_owned(),
                Err(reason) => return Ok(Err(reason)),
            };
            if head != commit {
                // The ref moved between resolving it and fetching it: the broker's retry resolves
                // it again, so the digest always names the commit that was built.
                return Err(HandlerError::Unavailable(format!(
                    "{reference} of {url} moved from {commit} to {head} while fetching"
                )));
            }
        }
        let _ = std::fs::remove_dir_all(checkout.join(".git"));
        Ok(tree(&checkout, &self.limits).map(|paths| on_disk(&checkout, paths)))
    }

    async fn archive(
        &self,
        buckets: &dyn SourceBuckets,
        bucket: &str,
        key: &str,
        work: &WorkDir,
    ) -> Result<Result<Vec<SourceFile>, String>, HandlerError> {
        let archive = work.0.join("source.archive");
        if buckets
            .fetch(bucket, key, &archive)
            .await
            .map_err(unavailable)?
            .is_none()
        {
            return Ok(Err("no such object".into()));
        }
        self.unpack(archive, work).await
    }

    /// Unpacks the downloaded `archive` into the work directory's `src`.
    async fn unpack(
        &self,
        archive: PathBuf,
        work: &WorkDir,
    ) -> Result<Result<Vec<SourceFile>, String>, HandlerError> {
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
        buckets: &dyn SourceBuckets,
        bucket: &str,
        prefix: &str,
        work: &WorkDir,
    ) -> Result<Result<Vec<SourceFile>, String>, HandlerError> {
        let objects = buckets.list(bucket, prefix).await.map_err(unavailable)?;
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
            buckets
                .fetch(bucket, &key, &target)
                .await
                .map_err(unavailable)?;
            paths.push(safe.to_string_lossy().into_owned());
        }
        paths.sort();
        Ok(Ok(on_disk(&dest, paths)))
    }
}

/// The files of a fetched tree, checked as an archive is: no links or special files, bounded
/// count and size.
fn tree(root: &Path, limits: &Limits) -> Result<Vec<String>, String> {
    let mut paths = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| e.to_string())?;
        for entry in entries {
            let entry = entry.map_err(|e| e.to_string())?;
            let path = entry.path();
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let kind = entry.file_type().map_err(|e| e.to_string())?;
            if kind.is_symlink() {
                return Err(format!(
                    "{relative:?} is a link; links are not built, commit the file itself"
                ));
            }
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            if !kind.is_file() {
                return Err(format!("{relative:?} is not a regular file"));
            }
            total += entry.metadata().map_err(|e| e.to_string())?.len();
            if total > limits.max_total_bytes {
                return Err(format!("more than {} bytes", limits.max_total_bytes));
            }
            if paths.len() >= limits.max_files {
                return Err(format!("more than {} files", limits.max_files));
            }
            paths.push(relative);
        }
    }
    paths.sort();
    Ok(paths)
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
