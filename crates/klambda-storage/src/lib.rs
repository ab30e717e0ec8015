//! Object storage for build contexts, build records and uploaded sources, behind
//! [`ObjectStore`].
//!
//! Two implementations: [`LocalDir`] (the embedded default) and [`S3Store`] (AWS S3, MinIO,
//! Garage, s3s). Keys are content-addressed by the stages (`contexts/<digest>.tar.gz`,
//! `images/<digest>.json`), so a write of the same key always carries the same bytes.
//!
//! **Invariant:** a reader never sees half an object: local writes go to a temporary file renamed
//! into place; S3 writes are one PUT or a multipart upload that is completed only when every part
//! is in, and aborted on any failure (no orphaned parts).
//!
//! # Layout
//! - [`local`]: the local directory store, [`LocalDir`].
//! - [`s3`]: [`S3Store`], with streaming multipart upload and download.
//! - [`stream`]: [`ChunkWriter`], how synchronous code (tar + gzip) streams an object into a
//!   store with bounded memory.

pub mod local;
pub mod s3;
pub mod stream;

pub use local::LocalDir;
pub use s3::{S3Settings, S3Store};
pub use stream::{ChunkWriter, Chunks, chunk_channel};

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A boxed future, so stages hold `Arc<dyn ObjectStore>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key is not one the platform writes (refused before touching the store).
    #[error("invalid object key {0:?}: keys are lowercase segments of a-z, 0-9, '.', '_' and '-'")]
    InvalidKey(String),
    /// A stored object is not what the platform wrote there.
    #[error("object {key} is corrupt: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The remote store failed after its retries; retrying later may help.
    #[error("object store {location}: {operation} failed: {reason}")]
    Remote {
        /// The bucket and key.
        location: String,
        /// What was being done.
        operation: &'static str,
        /// What the store or the network said.
        reason: String,
    },
    /// The store failed; retrying may help.
    #[error("object store {location}: {source}")]
    Io {
        /// Where.
        location: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// The key of a content digest's build context (`hex` = the digest's hex part).
pub fn context_key(hex: &str) -> String {
    format!("contexts/{hex}.tar.gz")
}

/// The key of a content digest's build record, written by the builder once an image exists;
/// its presence is the cache hit that skips upload and build.
pub fn image_record_key(hex: &str) -> String {
    format!("images/{hex}.json")
}

/// What the builder records for a built digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image pinned by digest, or the local artifact (`local:/path`).
    pub image: String,
}

impl ImageRecord {
    /// The build record of the digest whose hex part is `hex`, if that digest was built.
    pub async fn load(store: &dyn ObjectStore, hex: &str) -> Result<Option<Self>, StorageError> {
        let key = image_record_key(hex);
        match store.get(&key).await? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StorageError::Corrupt {
                        key,
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Records that the digest whose hex part is `hex` is built.
    pub async fn save(&self, store: &dyn ObjectStore, hex: &str) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        store.put(&image_record_key(hex), Bytes::from(bytes)).await
    }
}

/// One storage call as a span (`storage.<op>`, with the backend and key), so a trace shows
/// where a stage's time went.
pub(crate) fn traced<'a, T: 'a>(
    op: &'static str,
    backend: &'static str,
    key: &str,
    call: impl std::future::Future<Output = T> + Send + 'a,
) -> BoxFuture<'a, T> {
    use tracing::Instrument as _;
    let span =
        tracing::info_span!("storage", otel.name = %format!("storage.{op}"), op, backend, key);
    Box::pin(call.instrument(span))
}

/// Object storage.
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores `bytes` under `key`, replacing any previous object atomically.
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<(), StorageError>>;
    /// The object's size, if it exists.
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, StorageError>>;
    /// The object, if it exists (in memory: for small objects such as build records).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>>;
    /// Stores the object `chunks` carry, as they arrive, with bounded memory; returns its size.
    /// An `Err` chunk, or the sender dropped without [`ChunkWriter::finish`], abandons the
    /// object: nothing is stored under `key`.
    fn put_stream<'a>(
        &'a self,
        key: &'a str,
        chunks: Chunks,
    ) -> BoxFuture<'a, Result<u64, StorageError>>;
    /// Copies the object into the file `to`, streaming; its size, or `None` if it does not exist.
    fn download<'a>(
        &'a self,
        key: &'a str,
        to: &'a Path,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>>;
    /// How events refer to the object (`file:///…`, `s3://bucket/key`).
    fn uri(&self, key: &str) -> String;
    /// Users' own buckets, for function sources named `s3://bucket/key`: what this store's
    /// credentials reach besides its own keys. `None` (the default) for stores that are not S3.
    fn source_buckets(&self) -> Option<&dyn SourceBuckets> {
        None
    }
}

/// Objects in users' own buckets, read by bucket and key with any key alphabet: function
/// sources (`s3://bucket/key` archives and `s3://bucket/prefix/` trees).
pub trait SourceBuckets: Send + Sync {
    /// What the source at `key` (an object) or the prefix `key` holds now, as a revision that
    /// changes whenever its content does; `None` when there is nothing there.
    fn revision<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StorageError>>;
    /// The keys under `prefix`, with their sizes, in key order.
    fn list<'a>(
        &'a self,
        bucket: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, u64)>, StorageError>>;
    /// Copies the object into the file `to`; its size, or `None` when it does not exist.
    fn fetch<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        to: &'a Path,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>>;
}

/// Validates a key: `/`-separated segments of `[a-z0-9._-]`, none empty, `.` or `..`.
pub fn check_key(key: &str) -> Result<(), StorageError> {
    let valid = !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    if valid {
        Ok(())
    } else {
        Err(StorageError::InvalidKey(key.to_owned()))
    }
}

/// The S3 store `settings` name, as the one store type every caller holds.
pub fn s3(settings: &S3Settings) -> std::sync::Arc<dyn ObjectStore> {
    std::sync::Arc::new(S3Store::new(settings))
}

/// The store a stage's settings name (an S3 store also reads `s3://` sources):
///
/// - `KLAMBDA_STORE`: `s3://bucket` or a directory (`KLAMBDA_STORE_DIR` is the older name for a
///   directory); `default_dir` when neither is set;
/// - `KLAMBDA_S3_ENDPOINT`: a custom endpoint (MinIO, Garage, s3s), path-style;
/// - `KLAMBDA_S3_REGION`; credentials come from the standard AWS chain.
pub fn from_settings(
    get: impl Fn(&str) -> Option<String>,
    default_dir: &str,
) -> Result<std::sync::Arc<dyn ObjectStore>, String> {
    let get = |key: &str| {
        get(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let location = get("KLAMBDA_STORE")
        .or_else(|| get("KLAMBDA_STORE_DIR"))
        .unwrap_or_else(|| default_dir.to_owned());
    if location.starts_with("s3://") {
        let (bucket, prefix) = s3::parse_url(&location)
            .ok_or_else(|| format!("KLAMBDA_STORE={location:?} names no bucket (s3://bucket)"))?;
        if !prefix.is_empty() {
            return Err(format!(
                "KLAMBDA_STORE={location:?}: give the bucket only (s3://{bucket}); the platform chooses the keys"
            ));
        }
        let settings = S3Settings {
            endpoint: get("KLAMBDA_S3_ENDPOINT"),
            region: get("KLAMBDA_S3_REGION"),
            ..S3Settings::new(bucket)
        };
        return Ok(std::sync::Arc::new(S3Store::new(&settings)));
    }
    Ok(std::sync::Arc::new(LocalDir::new(location)))
}
