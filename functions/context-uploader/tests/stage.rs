//! The context-uploader through the harness's in-process path: contexts are uploaded once under
//! their digest, replays reuse them, built digests short-cut to build.completed, unbuildable
//! functions get build.failed, and a broken store is a retryable failure.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use cloudevents::{AttributesReader as _, Event};
use context_uploader::{ContextUploader, context_key, image_record_key};
use klambda_events::catalogue::{BuildCompleted, BuildFailed, ContextUploaded, ParserCompleted};
use klambda_events::spec::Source;
use klambda_events::{ContentDigest, Envelope, EventType, FunctionSpec, decode};
use klambda_harness::{HandlerError, Harness, Outcome};
use klambda_storage::ImageRecord;
use klambda_storage::{LocalDir, ObjectStore as _, S3Settings, S3Store};
use klambda_test_support::fixtures;
use klambda_test_support::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

fn store_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("klambda-uploader-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn parsed(function: (FunctionSpec, ContentDigest)) -> Result<(Event, ContentDigest)> {
    let (spec, digest) = function;
    Ok((
        fixtures::parser_completed("p-1", spec, digest.clone()),
        digest,
    ))
}

fn node() -> Result<(FunctionSpec, ContentDigest)> {
    fixtures::inline_function(
        "hello",
        fixtures::runtime("nodejs22")?,
        "index.handler",
        &[
            ("index.js", "exports.handler = async (e) => e;"),
            ("package.json", "{\"dependencies\":{}}"),
        ],
    )
}

/// A Python function whose source is the S3 object or prefix at `url` (`s3://bucket/key`).
fn python_from(url: &str) -> Result<(FunctionSpec, ContentDigest)> {
    let (bucket, key) = url
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .context("an s3://bucket/key URL")?;
    fixtures::function(
        "from-s3",
        fixtures::runtime("python3.12")?,
        "app.handler",
        Source::S3 {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        },
    )
}

/// The entry paths of a context archive, in order.
fn context_paths(bytes: &[u8]) -> Result<Vec<String>> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut paths = Vec::new();
    for entry in tar.entries()? {
        paths.push(entry?.path()?.display().to_string());
    }
    Ok(paths)
}

/// The entries of a context archive with their text, in order.
fn unpacked(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    use std::io::Read as _;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut files = Vec::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.display().to_string();
        let mut text = String::new();
        entry.read_to_string(&mut text)?;
        files.push((path, text));
    }
    Ok(files)
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
    let (event, digest) = parsed(node()?)?;
    let first = reply(&harness, event.clone()).await?;
    assert_eq!(first.ty(), ContextUploaded::TYPE);
    let uploaded = decode::<ContextUploaded>(&first)?;
    let path = dir.join(context_key(&digest));
    assert_eq!(uploaded.context.uri, format!("file://{}", path.display()));
    let bytes = std::fs::read(&path).context("the context object exists")?;
    assert_eq!(uploaded.context.size, bytes.len() as u64);

    let paths = context_paths(&bytes)?;
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
    let (event, digest) = parsed(node()?)?;
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
    // A Rust function whose source names no package.
    let rust = fixtures::inline_function(
        "r",
        fixtures::runtime("rust1")?,
        "handler",
        &[("src/lib.rs", "pub async fn handler() {}")],
    )?;
    // A Go function whose source names no module (the parser refuses it inline; an archive or
    // a repository is seen only here).
    let go = fixtures::inline_function(
        "g",
        fixtures::runtime("go1.24")?,
        "Handler",
        &[("handler.go", "package handler")],
    )?;
    let s3 = python_from("s3://sources/app.tar.gz")?;
    for (spec, needle) in [
        (rust, "needs a Cargo.toml naming its package"),
        (go, "needs a go.mod naming its module"),
        (s3, "needs S3 storage"),
    ] {
        let (event, _) = parsed(spec)?;
        let reply = reply(&harness, event).await?;
        assert_eq!(reply.ty(), BuildFailed::TYPE);
        let failure = decode::<BuildFailed>(&reply)?;
        assert!(failure.reason.contains(needle), "{}", failure.reason);
    }
    Ok(())
}

#[tokio::test]
async fn a_parser_completed_whose_digest_is_not_its_sources_is_refused() -> Result<()> {
    let dir = store_dir("forged");
    let harness = Harness::new(ContextUploader::new(Arc::new(LocalDir::new(&dir))));
    let (victim, victim_digest) = parsed(node()?)?;
    // Posted by someone who is not the parser: an attacker's code under the digest the
    // victim's code will have, so that the victim's own deploy would come back cached.
    let mut forged = decode::<ParserCompleted>(&victim)?;
    forged.spec.source = klambda_events::spec::Source::Inline {
        files: vec![klambda_events::spec::InlineFile {
            path: "index.js".into(),
            content: "exports.handler = async () => 'not yours';".into(),
            encoding: Default::default(),
        }],
    };
    let forged = Envelope::new("forged-1", "/knative-lambda/parser")
        .subject("hello")
        .encode::<ParserCompleted>(&forged);
    let error = harness
        .dispatch(forged)
        .await
        .err()
        .context("a digest that is not the source's must be refused")?;
    assert!(
        matches!(error, HandlerError::Invalid(_)) && !error.is_retryable(),
        "refused for good (dead-lettered): {error}"
    );
    assert!(error.to_string().contains("digest"), "{error}");
    assert!(
        !dir.join(context_key(&victim_digest)).exists(),
        "nothing stored under the victim's digest"
    );
    // The victim's own submission then builds the victim's code.
    let uploaded = reply(&harness, victim).await?;
    assert_eq!(uploaded.ty(), ContextUploaded::TYPE);
    let bytes = std::fs::read(dir.join(context_key(&victim_digest)))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
    let mut code = String::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        if entry.path()?.as_os_str() == "function/index.js" {
            std::io::Read::read_to_string(&mut entry, &mut code)?;
        }
    }
    assert_eq!(code, "exports.handler = async (e) => e;");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn a_broken_store_is_retryable() -> Result<()> {
    // The store's root is a file: every write fails.
    let file = store_dir("broken");
    std::fs::write(&file, b"not a directory")?;
    let harness = Harness::new(ContextUploader::new(Arc::new(LocalDir::new(&file))));
    let (event, _) = parsed(node()?)?;
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

/// A tar.gz of `files` (path, content), as a user would upload it.
fn archive(files: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (path, content) in files {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, content.as_bytes())?;
    }
    Ok(builder.into_inner()?.finish()?)
}

/// An uploader storing contexts in the bucket `contexts` of `server`, reading sources with the
/// same credentials.
fn s3_uploader(server: &S3Server) -> Result<(ContextUploader, S3Store)> {
    for bucket in ["contexts", "sources"] {
        server.bucket(bucket)?;
    }
    let settings = S3Settings {
        endpoint: Some(server.endpoint.clone()),
        credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        ..S3Settings::new("contexts")
    };
    let store = S3Store::new(&settings);
    Ok((ContextUploader::new(Arc::new(store.clone())), store))
}

#[tokio::test]
async fn s3_archives_and_prefixes_become_identical_contexts_in_s3() -> Result<()> {
    let server = S3Server::start("uploader-s3").await?;
    let (uploader, store) = s3_uploader(&server)?;
    let sources = store.in_bucket("sources");
    let app = [
        ("app.py", "def handler(event, context):\n    return event\n"),
        ("lib/util.py", "X = 1\n"),
    ];
    sources.put("fn/app.tar.gz", archive(&app)?.into()).await?;
    for (path, content) in app {
        sources
            .put(&format!("tree/{path}"), content.as_bytes().to_vec().into())
            .await?;
    }
    let harness = Harness::new(uploader);
    let mut contexts = Vec::new();
    for url in ["s3://sources/fn/app.tar.gz", "s3://sources/tree/"] {
        let (event, named) = parsed(python_from(url)?)?;
        let answer = reply(&harness, event.clone()).await?;
        assert_eq!(answer.ty(), ContextUploaded::TYPE, "{url}: {answer}");
        let uploaded = decode::<ContextUploaded>(&answer)?;
        // The digest is pinned to what the source holds now (its ETags), not only its name.
        assert_ne!(uploaded.digest, named, "{url}");
        assert_eq!(uploaded.commit, None, "commit is a git source's");
        let key = context_key(&uploaded.digest);
        assert_eq!(uploaded.context.uri, format!("s3://contexts/{key}"));
        let bytes = store.get(&key).await?.context("the context is in S3")?;
        assert_eq!(uploaded.context.size, bytes.len() as u64);
        // A replay answers the same.
        assert_eq!(reply(&harness, event).await?, answer);
        contexts.push(bytes);
    }
    // The same files, whether from an archive or a prefix: byte-identical contexts.
    assert_eq!(contexts[0], contexts[1]);
    let paths = context_paths(&contexts[0])?;
    assert!(
        paths.contains(&"function/lib/util.py".to_owned()),
        "{paths:?}"
    );
    // No multipart upload is left open.
    assert_eq!(server.unfinished_uploads()?, 0);
    Ok(())
}

/// An S3 source is named by a URL whose content can be replaced: the digest follows the content
/// (ETags), so a replaced object or a changed file under a prefix rebuilds, and the same content
/// stays a cache hit.
#[tokio::test]
async fn a_replaced_s3_source_gets_a_new_digest_and_an_unchanged_one_keeps_its_own() -> Result<()> {
    let server = S3Server::start("uploader-s3-moved").await?;
    let (uploader, store) = s3_uploader(&server)?;
    let sources = store.in_bucket("sources");
    let harness = Harness::new(uploader);
    let v1 = [("app.py", "def handler(event, context):\n    return 1\n")];
    let v2 = [("app.py", "def handler(event, context):\n    return 2\n")];
    let digest_of = |answer: &Event| -> Result<ContentDigest> {
        assert_eq!(answer.ty(), ContextUploaded::TYPE, "{answer}");
        Ok(decode::<ContextUploaded>(answer)?.digest)
    };
    for (url, put_v1, put_v2) in [
        (
            "s3://sources/one/app.tar.gz",
            "one/app.tar.gz",
            "one/app.tar.gz",
        ),
        ("s3://sources/tree/", "tree/app.py", "tree/app.py"),
    ] {
        let prefix = url.ends_with('/');
        let bytes = |files: &[(&str, &str)]| -> Result<Vec<u8>> {
            Ok(if prefix {
                files[0].1.as_bytes().to_vec()
            } else {
                archive(files)?
            })
        };
        sources.put(put_v1, bytes(&v1)?.into()).await?;
        let (event, _) = parsed(python_from(url)?)?;
        let first = digest_of(&reply(&harness, event.clone()).await?)?;
        // Unchanged: the same digest, so the same context and the same build.
        assert_eq!(
            digest_of(&reply(&harness, event.clone()).await?)?,
            first,
            "{url}"
        );
        sources.put(put_v2, bytes(&v2)?.into()).await?;
        let second = digest_of(&reply(&harness, event.clone()).await?)?;
        assert_ne!(second, first, "{url}: replaced content must rebuild");
        let context = store
            .get(&context_key(&second))
            .await?
            .context("the new context is in S3")?;
        let files = unpacked(&context)?;
        assert!(
            files
                .iter()
                .any(|(path, content)| path == "function/app.py" && content.contains("return 2")),
            "{url}: the new context holds the new code: {files:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn hostile_or_missing_s3_sources_fail_the_build_with_the_reason() -> Result<()> {
    let server = S3Server::start("uploader-hostile").await?;
    let (uploader, store) = s3_uploader(&server)?;
    let sources = store.in_bucket("sources");
    sources
        .put(
            "fn/slip.tar.gz",
            archive(&[("../../evil.py", "import os")])?.into(),
        )
        .await?;
    sources
        .put("fn/plain.txt", b"not an archive".to_vec().into())
        .await?;
    let harness = Harness::new(uploader);
    for (url, needle) in [
        (
            "s3://sources/fn/slip.tar.gz",
            "'..' would leave the directory",
        ),
        ("s3://sources/fn/plain.txt", "not a tar.gz or zip"),
        ("s3://sources/fn/missing.tar.gz", "no such object"),
        ("s3://sources/empty/", "no objects under this prefix"),
    ] {
        let (event, digest) = parsed(python_from(url)?)?;
        let answer = reply(&harness, event).await?;
        assert_eq!(answer.ty(), BuildFailed::TYPE, "{url}");
        let failure = decode::<BuildFailed>(&answer)?;
        assert!(failure.reason.contains(needle), "{url}: {}", failure.reason);
        assert!(failure.reason.contains(url), "{url}: {}", failure.reason);
        assert_eq!(store.head(&context_key(&digest)).await?, None);
    }
    assert!(!std::env::temp_dir().join("evil.py").exists());
    Ok(())
}

/// A git repository on disk with `files` committed on `main`; `links` are committed symlinks.
fn git_repo(
    name: &str,
    files: &[(&str, &str)],
    links: &[(&str, &str)],
) -> Result<std::path::PathBuf> {
    let dir = store_dir(&format!("git-{name}"));
    std::fs::create_dir_all(&dir)?;
    let git = |args: &[&str]| -> Result<()> {
        let status = std::process::Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
            .args(args)
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running git (scripts/services.sh installs it)")?;
        anyhow::ensure!(status.success(), "git {args:?} failed");
        Ok(())
    };
    git(&["init", "-q", "-b", "main"])?;
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().context("a parent")?)?;
        std::fs::write(path, content)?;
    }
    for (link, target) in links {
        std::os::unix::fs::symlink(target, dir.join(link))?;
    }
    git(&["add", "-A"])?;
    git(&["commit", "-qm", "function"])?;
    Ok(dir)
}

/// A `parser.completed` for a Python function with `source` (built directly: the parser accepts
/// only https URLs, and these tests serve sources locally).
fn with_source(id: &str, source: Source) -> Result<Event> {
    let (spec, digest) = fixtures::function(
        "fetched",
        fixtures::runtime("python3.12")?,
        "app.handler",
        source,
    )?;
    Ok(fixtures::parser_completed(&format!("p-{id}"), spec, digest))
}

fn from_git(url: &str, reference: &str) -> Result<Event> {
    with_source(
        reference,
        klambda_events::spec::Source::Git {
            url: url.to_owned(),
            reference: reference.to_owned(),
        },
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn archives_are_downloaded_checked_against_their_sha256_and_unpacked() -> Result<()> {
    let good = archive(&[("app.py", "def handler(e, c):\n    return e\n")])?;
    let served = good.clone();
    let router = axum::Router::new().route(
        "/fn.tar.gz",
        axum::routing::get(move || {
            let served = served.clone();
            async move { served }
        }),
    );
    let server = klambda_test_support::http::TestServer::start(router).await?;
    let dir = store_dir("archive-store");
    let store = LocalDir::new(&dir);
    let work = store_dir("archive-work");
    let harness = Harness::new(
        ContextUploader::new(Arc::new(store.clone()))
            .with_http_archives()
            .with_private_addresses()
            .with_work_dir(&work),
    );
    let source =
        |url: String, sha256: String| klambda_events::spec::Source::Archive { url, sha256 };
    let url = server.url("/fn.tar.gz");
    let answer = reply(
        &harness,
        with_source("good", source(url.clone(), sha256_hex(&good)))?,
    )
    .await?;
    assert_eq!(answer.ty(), ContextUploaded::TYPE, "{answer}");

    let wrong = "0".repeat(64);
    for (id, event, needle) in [
        (
            "tampered",
            with_source("tampered", source(url.clone(), wrong))?,
            "the download's sha256 is",
        ),
        (
            "missing",
            // Another hash: the same hash is the same source, built above.
            with_source(
                "missing",
                source(server.url("/none.tar.gz"), "1".repeat(64)),
            )?,
            "answered 404",
        ),
    ] {
        let answer = reply(&harness, event).await?;
        assert_eq!(answer.ty(), BuildFailed::TYPE, "{id}");
        let failure = decode::<BuildFailed>(&answer)?;
        assert!(failure.reason.contains(needle), "{id}: {}", failure.reason);
    }
    // Downloads happened in the work directory it was given, and nothing is left there.
    assert!(work.is_dir(), "the work directory was used");
    assert_eq!(
        std::fs::read_dir(&work)?.count(),
        0,
        "work directories removed"
    );
    // In production archives come over https only (a fresh store: nothing cached).
    let https_only = Harness::new(ContextUploader::new(Arc::new(LocalDir::new(store_dir(
        "archive-https-only",
    )))));
    let answer = reply(
        &https_only,
        with_source("plain", source(url.clone(), sha256_hex(&good)))?,
    )
    .await?;
    let failure = decode::<BuildFailed>(&answer)?;
    assert!(failure.reason.contains("https only"), "{}", failure.reason);
    // Nor from an address inside, whatever the URL calls it: a name that resolves to loopback is
    // refused when it is resolved for the connection (DNS rebinding), as are archives and git
    // repositories at literal private addresses. Refusals, not retries.
    let outside_only = Harness::new(
        ContextUploader::new(Arc::new(LocalDir::new(store_dir("archive-outside-only"))))
            .with_http_archives(),
    );
    let by_name = url.replace("127.0.0.1", "localhost");
    for (id, event) in [
        (
            "by-name",
            with_source("by-name", source(by_name, sha256_hex(&good)))?,
        ),
        (
            "literal",
            with_source("literal", source(url.clone(), sha256_hex(&good)))?,
        ),
        (
            "git",
            with_source(
                "git-inside",
                klambda_events::spec::Source::Git {
                    url: "https://localhost/team/repo.git".into(),
                    reference: "main".into(),
                },
            )?,
        ),
    ] {
        let answer = reply(&outside_only, event).await?;
        assert_eq!(answer.ty(), BuildFailed::TYPE, "{id}: {answer}");
        let failure = decode::<BuildFailed>(&answer)?;
        assert!(
            failure.reason.contains("does not fetch from"),
            "{id}: {}",
            failure.reason
        );
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn git_sources_are_fetched_at_their_ref_and_checked() -> Result<()> {
    let good = git_repo(
        "good",
        &[
            ("app.py", "def handler(e, c):\n    return e\n"),
            ("lib/util.py", "X = 1\n"),
        ],
        &[],
    )?;
    let linked = git_repo(
        "linked",
        &[("app.py", "x = 1\n")],
        &[("passwd", "/etc/passwd")],
    )?;
    let dir = store_dir("git-store");
    let store = LocalDir::new(&dir);
    let harness =
        Harness::new(ContextUploader::new(Arc::new(store.clone())).with_git_protocols(&["file"]));
    let answer = reply(
        &harness,
        from_git(&format!("file://{}", good.display()), "main")?,
    )
    .await?;
    assert_eq!(answer.ty(), ContextUploaded::TYPE, "{answer}");
    let uploaded = decode::<ContextUploaded>(&answer)?;
    let path = uploaded
        .context
        .uri
        .strip_prefix("file://")
        .context("a local context")?
        .to_owned();
    let bytes = std::fs::read(path)?;
    let paths = context_paths(&bytes)?;
    assert!(
        paths.contains(&"function/lib/util.py".to_owned()),
        "{paths:?}"
    );
    assert!(!paths.iter().any(|p| p.contains(".git")), "{paths:?}");

    for (event, needle) in [
        (
            from_git(&format!("file://{}", linked.display()), "main")?,
            "is a link",
        ),
        (
            from_git(&format!("file://{}", good.display()), "no-such-branch")?,
            "no ref \"no-such-branch\"",
        ),
    ] {
        let answer = reply(&harness, event).await?;
        assert_eq!(answer.ty(), BuildFailed::TYPE);
        let failure = decode::<BuildFailed>(&answer)?;
        assert!(failure.reason.contains(needle), "{}", failure.reason);
    }
    // In production only https is allowed: a file:// URL that reached the uploader is refused
    // (a fresh store: nothing cached).
    let https_only = Harness::new(ContextUploader::new(Arc::new(LocalDir::new(store_dir(
        "git-https-only",
    )))));
    let answer = reply(
        &https_only,
        from_git(&format!("file://{}", good.display()), "main")?,
    )
    .await?;
    assert_eq!(answer.ty(), BuildFailed::TYPE);
    let failure = decode::<BuildFailed>(&answer)?;
    assert!(failure.reason.contains("not allowed"), "{}", failure.reason);
    for dir in [good, linked, dir] {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

#[tokio::test]
async fn a_moved_branch_rebuilds_and_an_unmoved_one_is_a_cache_hit() -> Result<()> {
    let repo = git_repo(
        "moving",
        &[("app.py", "def handler(e, c):\n    return 1\n")],
        &[],
    )?;
    let dir = store_dir("git-moving-store");
    let store = LocalDir::new(&dir);
    let harness =
        Harness::new(ContextUploader::new(Arc::new(store.clone())).with_git_protocols(&["file"]));
    let url = format!("file://{}", repo.display());
    let head = || -> Result<String> {
        let output = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&repo)
            .output()?;
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    };

    // `main` at its first commit: the digest is the parser's pinned to that commit.
    let submitted = from_git(&url, "main")?;
    let parser_digest = decode::<ParserCompleted>(&submitted)?.digest;
    let first = decode::<ContextUploaded>(&reply(&harness, submitted).await?)?;
    assert_eq!(first.commit.as_deref(), Some(head()?.as_str()));
    assert_eq!(first.digest, parser_digest.at_revision(&head()?));
    // The build of that digest finished.
    store
        .put(
            &image_record_key(&first.digest),
            serde_json::to_vec(&ImageRecord {
                image: "registry.local/fetched@sha256:1".into(),
            })?
            .into(),
        )
        .await?;

    // Submitted again with `main` where it was: a cache hit, nothing rebuilt.
    let again = reply(&harness, with_id(from_git(&url, "main")?, "again")).await?;
    assert_eq!(again.ty(), BuildCompleted::TYPE, "{again}");
    let cached = decode::<BuildCompleted>(&again)?;
    assert!(cached.cached);
    assert_eq!(cached.digest, first.digest);

    // A push moves `main`: the same submission now makes a new context at the new commit.
    std::fs::write(repo.join("app.py"), "def handler(e, c):\n    return 2\n")?;
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(&repo)
            .status()
    };
    assert!(git(&["commit", "-qam", "push"])?.success());
    let moved = reply(&harness, with_id(from_git(&url, "main")?, "moved")).await?;
    assert_eq!(moved.ty(), ContextUploaded::TYPE, "{moved}");
    let moved = decode::<ContextUploaded>(&moved)?;
    assert_eq!(moved.commit.as_deref(), Some(head()?.as_str()));
    assert_ne!(moved.digest, first.digest);
    assert_eq!(moved.digest, parser_digest.at_revision(&head()?));
    for dir in [repo, dir] {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// `event` with another id: a new submission of the same source, not a replay.
fn with_id(mut event: Event, id: &str) -> Event {
    cloudevents::AttributesWriter::set_id(&mut event, id);
    event
}
