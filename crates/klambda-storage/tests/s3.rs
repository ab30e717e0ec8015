//! The S3 store against a real S3-compatible server (`s3s-fs`, installed by
//! `scripts/services.sh`, one instance per test): round trips, cache lookups, streaming
//! multipart uploads above 5 MiB, abandoned uploads leaving nothing behind, and a server that
//! stops in the middle of an upload.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use klambda_storage::s3::MIN_PART;
use klambda_storage::{ObjectStore, S3Settings, S3Store, StorageError, chunk_channel};
use klambda_test_support::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

async fn store(server: &S3Server, bucket: &str) -> Result<S3Store> {
    server.bucket(bucket)?;
    let settings = S3Settings {
        endpoint: Some(server.endpoint.clone()),
        region: Some("us-east-1".into()),
        credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        part_size: MIN_PART,
        ..S3Settings::new(bucket)
    };
    Ok(S3Store::connect(&settings).await)
}

/// Deterministic bytes that do not compress away.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Streams `bytes` through a chunk writer on a blocking thread, as the context uploader does.
fn produce(bytes: Vec<u8>, fail_after: Option<usize>) -> klambda_storage::Chunks {
    let (mut writer, chunks) = chunk_channel(8);
    std::thread::spawn(move || {
        for (n, piece) in bytes.chunks(64 * 1024).enumerate() {
            if fail_after.is_some_and(|limit| n * 64 * 1024 >= limit) {
                writer.fail(std::io::Error::other("the producer failed"));
                return;
            }
            if writer.write_all(piece).is_err() {
                return;
            }
        }
        let _ = writer.finish();
    });
    chunks
}

#[tokio::test]
async fn put_head_get_and_missing_objects() -> Result<()> {
    let server = S3Server::start("round-trip").await?;
    let store = store(&server, "contexts").await?;
    assert_eq!(store.head("contexts/none.tar.gz").await?, None);
    assert_eq!(store.get("contexts/none.tar.gz").await?, None);
    store
        .put("images/ab.json", Bytes::from_static(b"{\"image\":\"x\"}"))
        .await?;
    assert_eq!(store.head("images/ab.json").await?, Some(13));
    assert_eq!(
        store.get("images/ab.json").await?.as_deref(),
        Some(&b"{\"image\":\"x\"}"[..])
    );
    assert_eq!(store.uri("images/ab.json"), "s3://contexts/images/ab.json");
    Ok(())
}

#[tokio::test]
async fn a_small_stream_is_one_put_and_a_large_one_a_multipart_upload() -> Result<()> {
    let server = S3Server::start("multipart").await?;
    let store = store(&server, "contexts").await?;
    let small = noise(100_000, 1);
    assert_eq!(
        store
            .put_stream("contexts/small.tar.gz", produce(small.clone(), None))
            .await?,
        100_000
    );
    assert_eq!(
        store.get("contexts/small.tar.gz").await?.as_deref(),
        Some(&small[..])
    );
    // 12 MiB in 5 MiB parts: three parts, the last one short.
    let large = noise(12 * 1024 * 1024 + 7, 2);
    let size = store
        .put_stream("contexts/large.tar.gz", produce(large.clone(), None))
        .await?;
    assert_eq!(size, large.len() as u64);
    let file = server.root.join("downloaded");
    assert_eq!(
        store.download("contexts/large.tar.gz", &file).await?,
        Some(large.len() as u64)
    );
    assert!(std::fs::read(&file)? == large, "the object is the stream");
    assert_eq!(server.unfinished_uploads()?, 0);
    Ok(())
}

#[tokio::test]
async fn an_abandoned_stream_stores_nothing_and_leaves_no_parts() -> Result<()> {
    let server = S3Server::start("abandoned").await?;
    let store = store(&server, "contexts").await?;
    // Fails after two full parts were uploaded.
    let result = store
        .put_stream(
            "contexts/broken.tar.gz",
            produce(noise(16 * 1024 * 1024, 3), Some(11 * 1024 * 1024)),
        )
        .await;
    assert!(matches!(result, Err(StorageError::Io { .. })), "{result:?}");
    assert_eq!(store.head("contexts/broken.tar.gz").await?, None);
    assert_eq!(server.unfinished_uploads()?, 0, "no orphaned parts");
    Ok(())
}

#[tokio::test]
async fn a_server_stopped_mid_upload_is_retried_and_the_upload_completes() -> Result<()> {
    let mut server = S3Server::start("interrupted").await?;
    let store = store(&server, "contexts").await?;
    let data = noise(15 * 1024 * 1024, 4);
    let (mut writer, chunks) = chunk_channel(8);
    let (half_sent, half) = tokio::sync::oneshot::channel();
    let (go_on, resume) = std::sync::mpsc::channel::<()>();
    let producer = {
        let data = data.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let (first, rest) = data.split_at(7 * 1024 * 1024);
            writer.write_all(first)?;
            let _ = half_sent.send(());
            let _ = resume.recv();
            writer.write_all(rest)?;
            writer.finish()
        })
    };
    let upload = {
        let store = store.clone();
        tokio::spawn(async move { store.put_stream("contexts/resumed.tar.gz", chunks).await })
    };
    half.await?;
    // The first part is on its way or done; the server goes away for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop();
    let _ = go_on.send(());
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.resume().await?;
    let size = upload.await??;
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    assert_eq!(size, data.len() as u64);
    let stored = store
        .get("contexts/resumed.tar.gz")
        .await?
        .context("the object exists")?;
    assert!(
        stored == data[..],
        "the stored object is complete and intact"
    );
    assert_eq!(server.unfinished_uploads()?, 0);
    Ok(())
}

#[tokio::test]
async fn a_store_that_stays_down_reports_a_retryable_failure() -> Result<()> {
    let mut server = S3Server::start("down").await?;
    let mut settings = S3Settings::new("contexts");
    settings.endpoint = Some(server.endpoint.clone());
    settings.credentials = Some((ACCESS_KEY.into(), SECRET_KEY.into()));
    settings.max_attempts = 2;
    let store = S3Store::connect(&settings).await;
    server.stop();
    let error = store.head("contexts/x.tar.gz").await.err();
    assert!(
        matches!(
            &error,
            Some(StorageError::Remote {
                operation: "head",
                ..
            })
        ),
        "{error:?}"
    );
    Ok(())
}
