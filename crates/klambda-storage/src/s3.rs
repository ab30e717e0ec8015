//! S3-compatible storage on aws-sdk-s3: AWS S3, or MinIO, Garage, s3s with a custom endpoint and
//! path-style addressing.
//!
//! - Credentials: explicit keys when configured, else the standard AWS chain (environment,
//!   profile, web identity / IRSA, container and instance metadata).
//! - Retries: the SDK's standard mode (exponential backoff with jitter on throttling, 5xx and
//!   transport errors), `max_attempts` in all; after that the error goes to the stage, which
//!   answers 503 so the broker retries the event, and finally dead-letters it with the reason.
//! - Streaming: [`ObjectStore::put_stream`] uploads parts of `part_size` as the producer makes
//!   them (one part in flight while the next is produced), small objects in one PUT; any failure
//!   aborts the multipart upload, so no parts are left behind. Downloads stream to a file.

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sha2::Digest as _;
use tokio::sync::OnceCell;

use crate::stream::next;
use crate::{BoxFuture, Chunks, ObjectStore, StorageError, check_key};

/// The smallest part S3 accepts (except the last).
pub const MIN_PART: usize = 5 * 1024 * 1024;

/// How to reach a bucket.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// The bucket objects go to.
    pub bucket: String,
    /// A custom endpoint (`http://127.0.0.1:9000`); addressing is path-style when set.
    pub endpoint: Option<String>,
    /// The region (default: from the AWS chain, else `us-east-1`).
    pub region: Option<String>,
    /// Access key id and secret; `None`: the standard AWS credential chain.
    pub credentials: Option<(String, String)>,
    /// Attempts per request, retries included.
    pub max_attempts: u32,
    /// Multipart part size (at least 5 MiB).
    pub part_size: usize,
}

impl S3Settings {
    /// `bucket` with the defaults: standard chain, 5 attempts, 8 MiB parts.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            endpoint: None,
            region: None,
            credentials: None,
            max_attempts: 5,
            part_size: 8 * 1024 * 1024,
        }
    }
}

/// Splits `s3://bucket/key` into its bucket and key (the key may be empty or a prefix).
pub fn parse_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_owned(), key.to_owned()))
}

/// A bucket in S3-compatible storage.
#[derive(Clone, Debug)]
pub struct S3Store {
    /// Made on first use: loading the AWS configuration (credential chain, region) is async,
    /// and stages are built synchronously from their configuration.
    client: Arc<OnceCell<Client>>,
    settings: Arc<S3Settings>,
    bucket: String,
    part_size: usize,
}

/// The SDK client for `settings`: explicit keys or the standard chain, retries, endpoint.
async fn make_client(settings: &S3Settings) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some((id, secret)) = &settings.credentials {
        loader = loader.credentials_provider(Credentials::new(
            id.clone(),
            secret.clone(),
            None,
            None,
            "knative-lambda settings",
        ));
    }
    let shared = loader.load().await;
    let mut config = aws_sdk_s3::config::Builder::from(&shared)
        .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)));
    if let Some(endpoint) = &settings.endpoint {
        config = config.endpoint_url(endpoint).force_path_style(true);
    }
    match (&settings.region, shared.region()) {
        (Some(region), _) => config = config.region(Region::new(region.clone())),
        (None, None) => config = config.region(Region::new("us-east-1")),
        (None, Some(_)) => {}
    }
    Client::from_conf(config.build())
}

impl S3Store {
    /// A store for `settings`; the AWS configuration is loaded on first use.
    pub fn new(settings: &S3Settings) -> Self {
        Self {
            client: Arc::new(OnceCell::new()),
            settings: Arc::new(settings.clone()),
            bucket: settings.bucket.clone(),
            part_size: settings.part_size.max(MIN_PART),
        }
    }

    /// A store for `settings`, with the AWS configuration loaded now.
    pub async fn connect(settings: &S3Settings) -> Self {
        let store = Self::new(settings);
        store.client().await;
        store
    }

    /// The same client on another bucket (for sources users name as `s3://bucket/key`).
    pub fn in_bucket(&self, bucket: &str) -> Self {
        Self {
            bucket: bucket.to_owned(),
            ..self.clone()
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The SDK client (tests inspect the bucket through it).
    pub async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| make_client(&self.settings))
            .await
    }

    fn failed<E>(&self, key: &str, operation: &'static str) -> impl FnOnce(E) -> StorageError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let location = format!("s3://{}/{key}", self.bucket);
        move |error| StorageError::Remote {
            location,
            operation,
            reason: DisplayErrorContext(&error).to_string(),
        }
    }

    /// The objects under `prefix` as the listing gives them, in key order.
    async fn objects(&self, prefix: &str) -> Result<Vec<aws_sdk_s3::types::Object>, StorageError> {
        let mut objects = Vec::new();
        let mut pages = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(self.failed(prefix, "list"))?;
            objects.extend(page.contents().iter().cloned());
        }
        Ok(objects)
    }

    /// Keys under `prefix`, with their sizes, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StorageError> {
        Ok(self
            .objects(prefix)
            .await?
            .iter()
            .filter_map(|object| {
                let size = object.size().unwrap_or_default().max(0) as u64;
                Some((object.key()?.to_owned(), size))
            })
            .collect())
    }

    /// What the user's source at `key` (one object) or at the prefix `key` (ending in `/`, or
    /// empty) is now, as a revision: the object's ETag, or a hash of every object's key, size
    /// and ETag under the prefix; `None` when there is nothing there. The same content gives
    /// the same revision; any change of an object gives another.
    pub async fn revision(&self, key: &str) -> Result<Option<String>, StorageError> {
        if !(key.is_empty() || key.ends_with('/')) {
            // One object: its HEAD, not a listing of every key that starts with its name.
            let etag = self.etag(key).await?;
            return Ok(etag.map(|etag| format!("etag:{}", etag.trim_matches('"'))));
        }
        let mut listed = Vec::new();
        for object in self.objects(key).await? {
            let Some(name) = object.key() else { continue };
            // Some S3-compatible servers leave the ETag out of listings; HEAD has it.
            let etag = match object.e_tag() {
                Some(etag) => etag.to_owned(),
                None => self.etag(name).await?.unwrap_or_default(),
            };
            let etag = etag.trim_matches('"');
            let size = object.size().unwrap_or_default();
            listed.push(format!("{name}\t{size}\t{etag}"));
        }
        if listed.is_empty() {
            return Ok(None);
        }
        listed.sort();
        let hash = sha2::Sha256::digest(listed.join("\n").as_bytes());
        Ok(Some(format!("objects:{}", hex::encode(hash))))
    }

    /// HEAD of any key: the object's metadata, `None` when there is no such object.
    async fn head_any(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>, StorageError> {
        match self
            .client()
            .await
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(head)),
            Err(error)
                if error.as_service_error().is_some_and(|e| e.is_not_found())
                    || error
                        .raw_response()
                        .is_some_and(|r| r.status().as_u16() == 404) =>
            {
                Ok(None)
            }
            Err(error) => Err(self.failed(key, "head")(error)),
        }
    }

    /// The ETag of any key (a user's source), `None` when there is no such object.
    async fn etag(&self, key: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .head_any(key)
            .await?
            .map(|head| head.e_tag().unwrap_or_default().to_owned()))
    }

    /// Starts reading `key`: its body, or `None` when there is no such object.
    async fn open(
        &self,
        key: &str,
        operation: &'static str,
    ) -> Result<Option<ByteStream>, StorageError> {
        match self
            .client()
            .await
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(response) => Ok(Some(response.body)),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_no_such_key() || e.code() == Some("NoSuchKey")) =>
            {
                Ok(None)
            }
            Err(error) => Err(self.failed(key, operation)(error)),
        }
    }

    /// Downloads any key (user sources are not limited to the platform's key alphabet).
    pub async fn download_any(&self, key: &str, to: &Path) -> Result<Option<u64>, StorageError> {
        use tokio::io::AsyncWriteExt as _;
        let Some(mut body) = self.open(key, "download").await? else {
            return Ok(None);
        };
        let io = |error: std::io::Error| StorageError::Io {
            location: to.display().to_string(),
            source: error,
        };
        let mut file = tokio::fs::File::create(to).await.map_err(io)?;
        let mut size = 0u64;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(self.failed(key, "download"))?
        {
            file.write_all(&chunk).await.map_err(io)?;
            size += chunk.len() as u64;
        }
        file.flush().await.map_err(io)?;
        Ok(Some(size))
    }

    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.client()
            .await
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(self.failed(key, "put"))?;
        Ok(())
    }

    /// Uploads the rest of `chunks` as a multipart upload that starts with `first`.
    async fn multipart(
        &self,
        key: &str,
        first: Bytes,
        mut buffer: BytesMut,
        chunks: &mut Chunks,
    ) -> Result<u64, StorageError> {
        let created = self
            .client()
            .await
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(self.failed(key, "starting a multipart upload"))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let uploaded = async {
            let mut parts = Vec::new();
            let mut size = first.len() as u64;
            parts.push(self.part(key, &upload_id, 1, first).await?);
            loop {
                let chunk = next(chunks).await.map_err(|error| StorageError::Io {
                    location: format!("s3://{}/{key}", self.bucket),
                    source: error,
                })?;
                let done = chunk.is_none();
                if let Some(chunk) = chunk {
                    buffer.extend_from_slice(&chunk);
                }
                if buffer.len() >= self.part_size || (done && !buffer.is_empty()) {
                    let part = buffer.split().freeze();
                    size += part.len() as u64;
                    let number = parts.len() as i32 + 1;
                    parts.push(self.part(key, &upload_id, number, part).await?);
                }
                if done {
                    break;
                }
            }
            self.client()
                .await
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(self.failed(key, "completing the multipart upload"))?;
            Ok(size)
        };
        let result = uploaded.await;
        if result.is_err() {
            // No half objects and no orphaned parts: the upload is abandoned as a whole.
            let aborted = self
                .client()
                .await
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
            if let Err(error) = aborted {
                tracing::warn!(key, upload_id, error = %DisplayErrorContext(&error), "aborting the multipart upload failed; a bucket lifecycle rule for incomplete uploads cleans it up");
            }
        }
        result
    }

    async fn part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        bytes: Bytes,
    ) -> Result<CompletedPart, StorageError> {
        let uploaded = self
            .client()
            .await
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(self.failed(key, "uploading a part"))?;
        Ok(CompletedPart::builder()
            .set_e_tag(uploaded.e_tag().map(str::to_owned))
            .part_number(number)
            .build())
    }
}

impl crate::SourceBuckets for S3Store {
    fn revision<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StorageError>> {
        Box::pin(async move { self.in_bucket(bucket).revision(key).await })
    }

    fn list<'a>(
        &'a self,
        bucket: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, u64)>, StorageError>> {
        Box::pin(async move { self.in_bucket(bucket).list(prefix).await })
    }

    fn fetch<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        to: &'a Path,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        Box::pin(async move { self.in_bucket(bucket).download_any(key, to).await })
    }
}

impl ObjectStore for S3Store {
    fn source_buckets(&self) -> Option<&dyn crate::SourceBuckets> {
        Some(self)
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<(), StorageError>> {
        crate::traced("put", "s3", key, async move {
            check_key(key)?;
            self.put_bytes(key, bytes).await
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        crate::traced("head", "s3", key, async move {
            check_key(key)?;
            Ok(self
                .head_any(key)
                .await?
                .map(|head| head.content_length().unwrap_or_default().max(0) as u64))
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        crate::traced("get", "s3", key, async move {
            check_key(key)?;
            let Some(body) = self.open(key, "get").await? else {
                return Ok(None);
            };
            let bytes = body.collect().await.map_err(self.failed(key, "get"))?;
            Ok(Some(bytes.into_bytes()))
        })
    }

    fn put_stream<'a>(
        &'a self,
        key: &'a str,
        mut chunks: Chunks,
    ) -> BoxFuture<'a, Result<u64, StorageError>> {
        crate::traced("put_stream", "s3", key, async move {
            check_key(key)?;
            let producer_failed = |error| StorageError::Io {
                location: format!("s3://{}/{key}", self.bucket),
                source: error,
            };
            // Small objects go in one PUT; the multipart upload starts once a part is full.
            let mut buffer = BytesMut::new();
            loop {
                match next(&mut chunks).await.map_err(producer_failed)? {
                    Some(chunk) => {
                        buffer.extend_from_slice(&chunk);
                        if buffer.len() >= self.part_size {
                            let first = buffer.split().freeze();
                            return self.multipart(key, first, buffer, &mut chunks).await;
                        }
                    }
                    None => {
                        let size = buffer.len() as u64;
                        self.put_bytes(key, buffer.freeze()).await?;
                        return Ok(size);
                    }
                }
            }
        })
    }

    fn download<'a>(
        &'a self,
        key: &'a str,
        to: &'a Path,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        crate::traced("download", "s3", key, async move {
            check_key(key)?;
            self.download_any(key, to).await
        })
    }

    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split_into_bucket_and_key() {
        assert_eq!(
            parse_url("s3://sources/fn/app.tar.gz"),
            Some(("sources".into(), "fn/app.tar.gz".into()))
        );
        assert_eq!(
            parse_url("s3://sources"),
            Some(("sources".into(), "".into()))
        );
        assert_eq!(parse_url("s3:///key"), None);
        assert_eq!(parse_url("https://x/y"), None);
    }
}
