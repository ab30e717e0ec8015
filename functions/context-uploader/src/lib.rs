//! The context-uploader stage: turns a parsed function into a build context in the object store.
//!
//! - **Consumes** `io.knative.lambda.parser.completed`.
//! - **Replies** `io.knative.lambda.context.uploaded` (the context's URI and size), or
//!   `io.knative.lambda.build.completed` with `cached: true` when an image for the digest was
//!   already built (the build record `images/<digest>.json` exists), or
//!   `io.knative.lambda.build.failed` when the function cannot be built here (a runtime without a
//!   template, a source kind this build cannot fetch yet).
//! - **Side effects**: writes `contexts/<digest>.tar.gz` (deterministic: the same digest always
//!   gives the same bytes), once: a replay finds it and skips the upload.
//!
//! Storage failures answer 503 so the broker retries; nothing is half-written (the store
//! renames complete objects into place).

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use cloudevents::Event;
use klambda_events::catalogue::{BuildCompleted, BuildFailed, ContextUploaded, ParserCompleted};
use klambda_events::data::{
    BuildContext, BuildFailure, BuildFailureCause, BuiltImage, ObjectRef, ParsedFunction, Problem,
};
use klambda_events::spec::{ContentEncoding, Source};
use klambda_events::{BuildId, ContentDigest, Envelope, EventType, Stage, decode};
use klambda_harness::{ConfigError, ConfigSource, Context, Handler, HandlerError, Outcome};
use klambda_runtimes::Template;
use klambda_runtimes::context::{SourceFile, build};
use klambda_storage::{ImageRecord, LocalDir, ObjectStore};

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
}

impl ContextUploader {
    /// An uploader writing to `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// An uploader over the local directory `KLAMBDA_STORE_DIR` (default [`DEFAULT_STORE_DIR`]).
    pub fn from_config(config: &dyn ConfigSource) -> Result<Self, ConfigError> {
        let dir = config
            .get("KLAMBDA_STORE_DIR")
            .filter(|d| !d.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_STORE_DIR.to_owned());
        Ok(Self::new(Arc::new(LocalDir::new(dir.trim()))))
    }

    fn unavailable(error: impl std::fmt::Display) -> HandlerError {
        HandlerError::Unavailable(error.to_string())
    }
}

/// Why a parsed function cannot be built by this uploader.
fn unbuildable(input: &Event, parsed: &ParsedFunction, reason: String) -> Event {
    let build_id = BuildId::derive(&parsed.spec.name, &parsed.digest);
    Envelope::answering(input, Stage::ContextUploader, BuildFailed::TYPE)
        .subject(parsed.spec.name.to_string())
        .encode::<BuildFailed>(&BuildFailure {
            function: parsed.spec.name.clone(),
            build_id,
            digest: parsed.digest.clone(),
            cause: BuildFailureCause::Unknown,
            reason,
            log_excerpt: None,
        })
}

impl Handler for ContextUploader {
    fn stage(&self) -> Stage {
        Stage::ContextUploader
    }

    async fn handle(&self, event: Event, _: &Context) -> Result<Outcome, HandlerError> {
        let parsed = decode::<ParserCompleted>(&event)?;
        let name = parsed.spec.name.to_string();

        // Already built: skip the upload and the build.
        if let Some(record) = ImageRecord::load(self.store.as_ref(), parsed.digest.hex())
            .await
            .map_err(Self::unavailable)?
        {
            let build_id = BuildId::derive(&parsed.spec.name, &parsed.digest);
            let reply = Envelope::answering(&event, Stage::ContextUploader, BuildCompleted::TYPE)
                .subject(name)
                .encode::<BuildCompleted>(&BuiltImage {
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
        let files = match &parsed.spec.source {
            Source::Inline { files } => files
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
                    Ok(SourceFile {
                        path: f.path.clone(),
                        bytes,
                    })
                })
                .collect::<Result<Vec<_>, HandlerError>>()?,
            Source::S3 { .. } | Source::Git { .. } => {
                let reason = "this build context uploader handles inline sources; s3 and git sources are fetched by the S3-backed uploader (not enabled here)".to_owned();
                return Ok(Outcome::Reply(unbuildable(&event, &parsed, reason)));
            }
        };

        let key = context_key(&parsed.digest);
        let size = match self.store.head(&key).await.map_err(Self::unavailable)? {
            // The same digest always renders the same bytes: a replay finds it and moves on.
            Some(size) => size,
            None => {
                let bytes = build(&template, &files)
                    .map_err(|e| HandlerError::Internal(format!("rendering the context: {e}")))?;
                let size = bytes.len() as u64;
                self.store
                    .put(&key, Bytes::from(bytes))
                    .await
                    .map_err(Self::unavailable)?;
                size
            }
        };
        let reply = Envelope::answering(&event, Stage::ContextUploader, ContextUploaded::TYPE)
            .subject(name)
            .encode::<ContextUploaded>(&BuildContext {
                context: ObjectRef {
                    uri: self.store.uri(&key),
                    size,
                },
                spec: parsed.spec,
                digest: parsed.digest,
            });
        Ok(Outcome::Reply(reply))
    }
}
