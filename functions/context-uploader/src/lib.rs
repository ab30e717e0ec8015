//! The context-uploader stage: turns a parsed function into a build context in the object store.
//!
//! - **Consumes** `io.knative.lambda.parser.completed`.
//! - **Replies** `io.knative.lambda.context.uploaded` (the context's URI and size), or
//!   `io.knative.lambda.build.completed` with `cached: true` when an image for the digest was
//!   already built (the build record `images/<digest>.json` exists), or
//!   `io.knative.lambda.build.failed` when the function cannot be built (a runtime without a
//!   template, a source that is missing, hostile or too big, a git ref that does not exist).
//! - **Sources**: inline files; `s3://bucket/key` archives (tar.gz, zip) and `s3://bucket/prefix/`
//!   trees, unpacked safely (see `klambda_runtimes::archive`); git repositories over https at a
//!   ref, one commit deep; all in a work directory removed after.
//! - **Checks** what it can: the digest must be the one `klambda_events::digest` gives the spec's
//!   source (400, dead-lettered, otherwise): a `parser.completed` posted by anyone but the parser
//!   cannot make its source the cached build of another function's digest. Fetches connect only
//!   to addresses the source rules allow, checked when the name is resolved for the connection
//!   (`connect`), so a public name that resolves to a private address fetches nothing.
//! - **Side effects**: writes `contexts/<digest>.tar.gz` (deterministic: the same digest always
//!   gives the same bytes), once: a replay finds it and skips the upload.
//!
//! The context is streamed into the store as it is compressed (bounded memory, multipart on S3).
//! Storage failures answer 503 so the broker retries; nothing is half-written (the local store
//! renames complete objects into place; S3 multipart uploads are aborted on failure).

use std::sync::Arc;
use std::time::Instant;

use cloudevents::Event;
use klambda_events::catalogue::{BuildCompleted, BuildFailed, ContextUploaded, ParserCompleted};
use klambda_events::data::{
    BuildContext, BuildFailure, BuildFailureCause, BuiltImage, ObjectRef, ParsedFunction, Problem,
};
use klambda_events::{BuildId, ContentDigest, Stage, decode, reply};
use klambda_harness::{ConfigError, ConfigSource, Context, Handler, HandlerError, Outcome};
use klambda_runtimes::Template;
use klambda_runtimes::context::{self, SourceFile};
use klambda_storage::{ImageRecord, ObjectStore, chunk_channel};

pub mod connect;
pub mod source;

use source::{Fetched, Sources};

/// The settings this stage reads besides the harness's and the store's
/// (`klambda_harness::config::STORE_SETTINGS`).
pub const SETTINGS: &[klambda_harness::StageSetting] = &[klambda_harness::StageSetting::new(
    "KLAMBDA_SOURCE_DIR",
    "where sources are fetched and unpacked (default: under the temp dir)",
)];

/// The object store used when `KLAMBDA_STORE_DIR` is not set.
pub const DEFAULT_STORE_DIR: &str = "klambda-store";

/// The key of a digest's build context.
pub fn context_key(digest: &ContentDigest) -> String {
    klambda_storage::context_key(digest.hex())
}

/// The key of a digest's build record.
pub fn image_record_key(digest: &ContentDigest) -> String {
    klambda_storage::image_record_key(digest.hex())
}

/// The context-uploader's handler.
#[derive(Clone)]
pub struct ContextUploader {
    store: Arc<dyn ObjectStore>,
    sources: Sources,
}

impl ContextUploader {
    /// An uploader writing to `store`, for inline sources.
    /// With an S3 store, `s3://` sources are read with its credentials (any bucket they
    /// reach); other stores refuse them.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        let mut sources = Sources::default();
        sources.store = Some(Arc::clone(&store));
        Self { store, sources }
    }

    /// Also lets git fetch over these transports (tests use `file`; production is https only).
    pub fn with_git_protocols(mut self, protocols: &[&str]) -> Self {
        self.sources.git_protocols = protocols.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// Also downloads archives over plain http (tests serve them locally; production is https
    /// only).
    pub fn with_http_archives(mut self) -> Self {
        self.sources.http_archives = true;
        self
    }

    /// Also lets fetches connect to loopback and private addresses (tests serve sources there;
    /// production never does).
    pub fn with_private_addresses(mut self) -> Self {
        self.sources.private_addresses = true;
        self
    }

    /// Fetches sources into `dir` (one work directory per fetch, removed after) instead of
    /// `klambda-sources` under the system's temp dir.
    pub fn with_work_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.sources.work = dir.into();
        self
    }

    /// With other bounds on what an unpacked source may be.
    pub fn with_source_limits(mut self, limits: klambda_runtimes::archive::Limits) -> Self {
        self.sources.limits = limits;
        self
    }

    /// An uploader over the store `KLAMBDA_STORE` names (`s3://bucket`, with
    /// `KLAMBDA_S3_ENDPOINT` / `KLAMBDA_S3_REGION`, or a directory; default
    /// [`DEFAULT_STORE_DIR`]). With S3, `s3://` sources are fetched with the same credentials.
    /// `KLAMBDA_SOURCE_DIR` is where sources are fetched (default: under the temp dir).
    pub fn from_config(config: &dyn ConfigSource) -> Result<Self, ConfigError> {
        let store = klambda_storage::from_settings(|key| config.get(key), DEFAULT_STORE_DIR)
            .map_err(|problem| ConfigError {
                problems: vec![problem],
            })?;
        let mut uploader = Self::new(store);
        if let Some(dir) = config.setting("KLAMBDA_SOURCE_DIR") {
            uploader = uploader.with_work_dir(dir);
        }
        Ok(uploader)
    }

    /// Renders the context on a blocking thread and streams it into the store as it is
    /// compressed: at most `IN_FLIGHT` chunks (4 MiB) between the two, whatever its size.
    /// Returns the context's size. (Public for the storage benchmark.)
    pub async fn upload(
        &self,
        key: &str,
        template: Template,
        runtime: Vec<(String, String)>,
        files: Vec<SourceFile>,
    ) -> Result<u64, HandlerError> {
        const IN_FLIGHT: usize = 16;
        let (mut writer, chunks) = chunk_channel(IN_FLIGHT);
        let producer = tokio::task::spawn_blocking(move || {
            match context::write(&template, &runtime, &files, &mut writer) {
                Ok(()) => writer.finish(),
                Err(error) => {
                    let reason = error.to_string();
                    writer.fail(error);
                    Err(std::io::Error::other(reason))
                }
            }
        });
        let stored = self.store.put_stream(key, chunks).await;
        let produced = producer
            .await
            .map_err(|e| HandlerError::Internal(format!("rendering the context: {e}")))?;
        match (produced, stored) {
            (_, Ok(size)) => Ok(size),
            // The producer's own failure explains the store's.
            (Err(error), Err(_)) => Err(HandlerError::Internal(format!(
                "rendering the context: {error}"
            ))),
            (Ok(()), Err(error)) => Err(error.into()),
        }
    }
}

/// Why a parsed function cannot be built by this uploader.
fn unbuildable(input: &Event, parsed: &ParsedFunction, reason: String) -> Event {
    let build_id = BuildId::derive(&parsed.spec.name, &parsed.digest);
    reply::<BuildFailed>(input, Stage::ContextUploader)
        .subject(parsed.spec.name.to_string())
        .data(&BuildFailure {
            function: parsed.spec.name.clone(),
            build_id,
            digest: parsed.digest.clone(),
            cause: BuildFailureCause::Unknown,
            reason,
            log_excerpt: None,
            diagnostics: Vec::new(),
        })
}

impl Handler for ContextUploader {
    fn stage(&self) -> Stage {
        Stage::ContextUploader
    }

    async fn handle(&self, event: Event, context: &Context) -> Result<Outcome, HandlerError> {
        let mut parsed = decode::<ParserCompleted>(&event)?;
        let named = klambda_events::digest::content_digest(
            parsed.spec.runtime,
            &parsed.spec.handler,
            &parsed.spec.source,
        );
        if named != parsed.digest {
            return Err(HandlerError::Invalid(vec![Problem::new(
                "data.digest",
                format!(
                    "{} is not the digest of this source, which is {named}: only the parser names a source's digest",
                    parsed.digest
                ),
            )]));
        }
        let name = parsed.spec.name.to_string();
        // A source named by something that can change under the same name (a git branch, an S3
        // object or prefix) is pinned to what it holds now, so its digest is a digest of
        // content: a moved branch or a replaced object rebuilds, an unchanged one does not.
        let revision = match self.sources.resolve(&parsed.spec.source).await? {
            Ok(revision) => revision,
            Err(reason) => return Ok(Outcome::Reply(unbuildable(&event, &parsed, reason))),
        };
        if let Some(revision) = &revision {
            parsed.digest = parsed.digest.at_revision(revision);
        }
        let commit = revision
            .clone()
            .filter(|_| matches!(parsed.spec.source, klambda_events::spec::Source::Git { .. }));

        // Already built: skip the upload and the build.
        if let Some(record) = ImageRecord::load(self.store.as_ref(), parsed.digest.hex()).await? {
            let build_id = BuildId::derive(&parsed.spec.name, &parsed.digest);
            let reply = reply::<BuildCompleted>(&event, Stage::ContextUploader)
                .subject(name)
                .data(&BuiltImage {
                    spec: parsed.spec,
                    digest: parsed.digest,
                    build_id,
                    image: record.image,
                    cached: true,
                });
            return Ok(Outcome::Reply(reply));
        }

        let template = match Template::of(parsed.spec.runtime) {
            Ok(template) => template,
            Err(error) => {
                return Ok(Outcome::Reply(unbuildable(
                    &event,
                    &parsed,
                    error.to_string(),
                )));
            }
        };
        let key = context_key(&parsed.digest);
        let size = match self.store.head(&key).await? {
            // The same digest always renders the same bytes: a replay finds it and moves on.
            Some(size) => size,
            None => {
                let (files, _work) = match self
                    .sources
                    .fetch(&parsed.spec.source, revision.as_deref())
                    .await?
                {
                    Fetched::Files(files, work) => (files, work),
                    Fetched::Refused(reason) => {
                        return Ok(Outcome::Reply(unbuildable(&event, &parsed, reason)));
                    }
                };
                // The runtime's files for this function (a Go program importing its module).
                let runtime = match context::runtime_files(&template, &parsed.spec.handler, &files)
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        return Ok(Outcome::Reply(unbuildable(
                            &event,
                            &parsed,
                            error.to_string(),
                        )));
                    }
                };
                let started = Instant::now();
                let size = self.upload(&key, template, runtime, files).await?;
                context.metrics().context_uploaded(
                    parsed.spec.runtime,
                    size,
                    started.elapsed().as_secs_f64(),
                );
                size
            }
        };
        let reply = reply::<ContextUploaded>(&event, Stage::ContextUploader)
            .subject(name)
            .data(&BuildContext {
                context: ObjectRef {
                    uri: self.store.uri(&key),
                    size,
                },
                spec: parsed.spec,
                digest: parsed.digest,
                commit,
            });
        Ok(Outcome::Reply(reply))
    }
}
