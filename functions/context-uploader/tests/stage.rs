//! The context-uploader through the harness's in-process path: contexts are uploaded once under
//! their digest, replays reuse them, built digests short-cut to build.completed, unbuildable
//! functions get build.failed, and a broken store is a retryable failure.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use cloudevents::{AttributesReader as _, Event};
use context_uploader::{ContextUploader, context_key, image_record_key};
use klambda_events::catalogue::{BuildCompleted, BuildFailed, ContextUploaded, ParserCompleted};
use klambda_events::data::{Operation, ParsedFunction};
use klambda_events::{ContentDigest, Envelope, EventType, FunctionSpec, decode};
use klambda_harness::{HandlerError, Harness, Outcome};
use klambda_storage::ImageRecord;
use klambda_storage::{LocalDir, ObjectStore as _};

fn store_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("klambda-uploader-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn parsed(spec: serde_json::Value) -> Result<(Event, ContentDigest)> {
    let submission = serde_json::from_value(spec)?;
    let (spec, digest): (FunctionSpec, ContentDigest) =
        parser::parse(submission, &parser::Limits::default())
            .map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let event = Envelope::new("p-1", "/knative-lambda/parser")
        .subject(spec.name.to_string())
        .encode::<ParserCompleted>(&ParsedFunction {
            operation: Operation::Create,
            spec,
            digest: digest.clone(),
        });
    Ok((event, digest))
}

fn node() -> serde_json::Value {
    serde_json::json!({
        "name": "hello", "runtime": "nodejs22", "handler": "index.handler",
        "source": {"kind": "inline", "files": [
            {"path": "index.js", "content": "exports.handler = async (e) => e;"},
            {"path": "package.json", "content": "{\"dependencies\":{}}"}
        ]}
    })
}

async fn reply(harness: &Harness<ContextUploader>, event: Event) -> Result<Event> {
    match harness.dispatch(event).await? {
        Outcome::Reply(reply) => Ok(reply),
        Outcome::Done => anyhow::bail!("expected a reply"),
    }
}

#[tokio::test]
async fn uploads_the_context_once_under_its_digest() -> Result<()> {
    let dir = store_dir("once");
    let harness = Harness::new(ContextUploader::new(Arc::new(LocalDir::new(&dir))));
    let (event, digest) = parsed(node())?;
    let first = reply(&harness, event.clone()).await?;
    assert_eq!(first.ty(), ContextUploaded::TYPE);
    let uploaded = decode::<ContextUploaded>(&first)?;
    let path = dir.join(context_key(&digest));
    assert_eq!(uploaded.context.uri, format!("file://{}", path.display()));
    let bytes = std::fs::read(&path).context("the context object exists")?;
    assert_eq!(uploaded.context.size, bytes.len() as u64);

    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut paths: Vec<String> = Vec::new();
    for entry in tar.entries()? {
        paths.push(entry?.path()?.display().to_string());
    }
    assert_eq!(
        paths,
        [
            "Dockerfile",
            "function/index.js",
            "function/package.json",
            "runtime/shim.js"
        ]
    );

    // A replay answers the same and leaves the object as it was.
    let modified = std::fs::metadata(&path)?.modified()?;
    let second = reply(&harness, event).await?;
    assert_eq!(first, second);
    assert_eq!(
        std::fs::metadata(&path)?.modified()?,
        modified,
        "no second upload"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn an_already_built_digest_skips_upload_and_build() -> Result<()> {
    let dir = store_dir("cached");
    let store = LocalDir::new(&dir);
    let (event, digest) = parsed(node())?;
    let record = ImageRecord {
        image: "registry.local/hello@sha256:abc".into(),
    };
    store
        .put(
            &image_record_key(&digest),
            serde_json::to_vec(&record)?.into(),
        )
        .await?;
    let harness = Harness::new(ContextUploader::new(Arc::new(store.clone())));
    let reply = reply(&harness, event).await?;
    assert_eq!(reply.ty(), BuildCompleted::TYPE);
    let built = decode::<BuildCompleted>(&reply)?;
    assert!(built.cached);
    assert_eq!(built.image, record.image);
    assert_eq!(
        store.head(&context_key(&digest)).await?,
        None,
        "nothing uploaded"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn unbuildable_functions_get_build_failed_with_the_reason() -> Result<()> {
    let dir = store_dir("unbuildable");
    let harness = Harness::new(ContextUploader::new(Arc::new(LocalDir::new(&dir))));
    let go = serde_json::json!({"name": "g", "runtime": "go1.24", "handler": "Handle",
        "source": {"kind": "inline", "files": [{"path": "main.go", "content": "package main"}]}});
    let git = serde_json::json!({"name": "h", "runtime": "python3.12", "handler": "app.handler",
        "source": {"kind": "git", "url": "https://github.com/a/b", "ref": "main"}});
    for (spec, needle) in [(go, "no build template"), (git, "inline sources")] {
        let (event, _) = parsed(spec)?;
        let reply = reply(&harness, event).await?;
        assert_eq!(reply.ty(), BuildFailed::TYPE);
        let failure = decode::<BuildFailed>(&reply)?;
        assert!(failure.reason.contains(needle), "{}", failure.reason);
    }
    Ok(())
}

#[tokio::test]
async fn a_broken_store_is_retryable() -> Result<()> {
    // The store's root is a file: every write fails.
    let file = store_dir("broken");
    std::fs::write(&file, b"not a directory")?;
    let harness = Harness::new(ContextUploader::new(Arc::new(LocalDir::new(&file))));
    let (event, _) = parsed(node())?;
    let error = harness
        .dispatch(event)
        .await
        .err()
        .context("a broken store must fail")?;
    assert!(matches!(error, HandlerError::Unavailable(_)), "{error}");
    assert!(error.is_retryable());
    std::fs::remove_file(&file)?;
    Ok(())
}
