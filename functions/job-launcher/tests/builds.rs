//! Real local builds with the machine's Node.js and Python, through the harness: completion
//! with a build record, syntax errors and dependency failures classified with the log excerpt,
//! deadlines, cancellation, and redeliveries that neither rebuild nor start twice. A local
//! build's outcome is the reply to its `context.uploaded`; `build.started` is progress.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cloudevents::{AttributesReader as _, Event};
use job_launcher::JobLauncher;
use job_launcher::builder::local::LocalBuilder;
use klambda_events::catalogue::{
    BuildCancel, BuildCancelled, BuildCompleted, BuildFailed, BuildStarted, BuildTimeout,
};
use klambda_events::data::{BuildFailureCause, CancelRequest};
use klambda_events::{Envelope, EventType, FunctionName, decode};
use klambda_harness::publisher::Memory;
use klambda_harness::{Harness, Outcome};
use klambda_storage::{LocalDir, ObjectStore};
use klambda_test_support::fixtures;

struct Bench {
    launcher: Harness<JobLauncher>,
    published: Memory,
    store: Arc<dyn ObjectStore>,
}

fn bench(name: &str) -> Bench {
    let root = std::env::temp_dir().join(format!("klambda-builds-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let store: Arc<dyn ObjectStore> = Arc::new(LocalDir::new(root.join("store")));
    let builder = Arc::new(LocalBuilder::new(Arc::clone(&store), root.join("work")));
    let published = Memory::default();
    let launcher = Harness::new(JobLauncher::new(builder, Arc::clone(&store)))
        .with_publisher(Arc::new(published.clone()));
    Bench {
        launcher,
        published,
        store,
    }
}

/// The context of `submission` (an inline function, build deadline overridden) in the store,
/// and the `context.uploaded` announcing it: the job launcher's input.
async fn uploaded(
    bench: &Bench,
    submission: serde_json::Value,
    deadline: Option<u32>,
) -> Result<Event> {
    let text = |field: &serde_json::Value| field.as_str().unwrap_or_default().to_owned();
    let files: Vec<(String, String)> = submission["source"]["files"]
        .as_array()
        .context("an inline submission")?
        .iter()
        .map(|file| (text(&file["path"]), text(&file["content"])))
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let (mut spec, digest) = fixtures::inline_function(
        &text(&submission["name"]),
        fixtures::runtime(&text(&submission["runtime"]))?,
        &text(&submission["handler"]),
        &files,
    )?;
    if let Some(deadline) = deadline {
        spec.build.timeout_seconds = deadline;
    }
    let key = klambda_storage::context_key(digest.hex());
    bench
        .store
        .put(&key, fixtures::context_archive(&spec)?.into())
        .await?;
    let uri = format!("file:///{key}");
    Ok(fixtures::context_uploaded(spec, digest, &uri))
}

async fn reply(bench: &Bench, event: Event) -> Result<Event> {
    match bench.launcher.dispatch(event).await? {
        Outcome::Reply(reply) => Ok(reply),
        Outcome::Done => bail!("the launcher did not reply"),
    }
}

/// How many builds were reported started (`build.started` progress).
fn builds_started(bench: &Bench) -> usize {
    bench
        .published
        .events()
        .iter()
        .filter(|e| e.ty() == BuildStarted::TYPE)
        .count()
}

fn node(name: &str, files: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"name": name, "runtime": "nodejs20", "handler": "index.handler",
                       "source": {"kind": "inline", "files": files}})
}

fn python(name: &str, files: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"name": name, "runtime": "python3.11", "handler": "app.handler",
                       "source": {"kind": "inline", "files": files}})
}

#[tokio::test]
async fn a_good_build_completes_and_is_cached() -> Result<()> {
    let bench = bench("good");
    let input = uploaded(&bench, node("good", serde_json::json!([
        {"path": "index.js", "content": "exports.handler = async (e) => ({ ok: true });"},
        {"path": "package.json", "content": "{\"name\":\"good\",\"version\":\"1.0.0\",\"dependencies\":{}}"}
    ])), None).await?;
    // Two deliveries of the same input at once (a redelivery while the build runs): one build,
    // the same answer to both.
    let (done, twin) = tokio::join!(reply(&bench, input.clone()), reply(&bench, input.clone()));
    let done = done?;
    assert_eq!(done, twin?);
    assert_eq!(builds_started(&bench), 1, "one build");
    assert_eq!(done.ty(), BuildCompleted::TYPE, "{done:?}");
    let built = decode::<BuildCompleted>(&done)?;
    assert!(!built.cached);
    let artifact = built
        .image
        .strip_prefix("local:")
        .context("a local artifact")?;
    assert!(
        std::path::Path::new(artifact)
            .join("function/index.js")
            .is_file()
    );
    assert!(
        std::path::Path::new(artifact)
            .join("runtime/shim.js")
            .is_file()
    );
    // The outcome continues the input's story: same subject, deterministic id.
    assert_eq!(done.subject(), Some("good"));

    // Later: the record makes it a cache hit, no build.
    let again = reply(&bench, input).await?;
    assert_eq!(again.ty(), BuildCompleted::TYPE);
    assert!(decode::<BuildCompleted>(&again)?.cached);
    assert!(
        bench
            .store
            .head(&klambda_storage::image_record_key(built.digest.hex()))
            .await?
            .is_some()
    );
    Ok(())
}

#[tokio::test]
async fn syntax_errors_fail_as_compile_errors_with_the_message() -> Result<()> {
    for (runtime, submission, needle) in [
        (
            "node",
            node(
                "bad-js",
                serde_json::json!([{"path": "index.js", "content": "exports.handler = async (e) => {"}]),
            ),
            "SyntaxError",
        ),
        (
            "python",
            python(
                "bad-py",
                serde_json::json!([{"path": "app.py", "content": "def handler(event, context)\n    return event\n"}]),
            ),
            "SyntaxError",
        ),
    ] {
        let bench = bench(runtime);
        let input = uploaded(&bench, submission, None).await?;
        let failed = reply(&bench, input.clone()).await?;
        assert_eq!(failed.ty(), BuildFailed::TYPE, "{runtime}: {failed:?}");
        // Delivered again after it ended (its first answer was not confirmed): the same
        // answer, from memory, without a second build.
        assert_eq!(reply(&bench, input).await?, failed);
        assert_eq!(builds_started(&bench), 1, "{runtime}: one build");
        let failure = decode::<BuildFailed>(&failed)?;
        assert_eq!(failure.cause, BuildFailureCause::CompileError, "{runtime}");
        let log = failure.log_excerpt.unwrap_or_default();
        assert!(log.contains(needle), "{runtime}: {log}");
    }
    Ok(())
}

#[tokio::test]
async fn a_missing_dependency_fails_as_dependency_resolution() -> Result<()> {
    let bench = bench("deps");
    let input = uploaded(
        &bench,
        python(
            "deps",
            serde_json::json!([
                {"path": "app.py", "content": "def handler(event, context):\n    return event\n"},
                {"path": "requirements.txt", "content": "klambda-no-such-package-anywhere==9.9.9\n"}
            ]),
        ),
        None,
    )
    .await?;
    let failed = reply(&bench, input).await?;
    let failure = decode::<BuildFailed>(&failed).with_context(|| format!("{failed:?}"))?;
    assert_eq!(failure.cause, BuildFailureCause::DependencyResolution);
    assert!(
        failure
            .log_excerpt
            .unwrap_or_default()
            .contains("klambda-no-such-package-anywhere")
    );
    Ok(())
}

/// A Node.js function whose install runs for 8 s (a preinstall script).
fn slow(name: &str) -> serde_json::Value {
    node(
        name,
        serde_json::json!([
            {"path": "index.js", "content": "exports.handler = async (e) => e;"},
            {"path": "package.json", "content": "{\"name\":\"slow\",\"version\":\"1.0.0\",\"scripts\":{\"preinstall\":\"node -e \\\"setTimeout(()=>{},8000)\\\"\"}}"}
        ]),
    )
}

#[tokio::test]
async fn a_build_past_its_deadline_times_out() -> Result<()> {
    let bench = bench("deadline");
    let input = uploaded(&bench, slow("slow-deadline"), Some(2)).await?;
    let started = Instant::now();
    let timed_out = reply(&bench, input).await?;
    assert_eq!(timed_out.ty(), BuildTimeout::TYPE, "{timed_out:?}");
    assert_eq!(decode::<BuildTimeout>(&timed_out)?.deadline_seconds, 2);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the deadline stopped the build"
    );
    Ok(())
}

#[tokio::test]
async fn build_cancel_stops_a_running_build() -> Result<()> {
    let bench = bench("cancel");
    let input = uploaded(&bench, slow("slow-cancel"), None).await?;
    let bench = Arc::new(bench);
    let delivery = {
        let bench = Arc::clone(&bench);
        tokio::spawn(async move { reply(&bench, input).await })
    };
    let began = Instant::now();
    while bench.launcher_running() == 0 {
        if began.elapsed() > Duration::from_secs(30) {
            bail!("the build did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancel = Envelope::new("c-1", "/cli")
        .subject("slow-cancel")
        .encode::<BuildCancel>(&CancelRequest {
            function: FunctionName::new("slow-cancel")?,
            build_id: None,
            reason: Some("wrong branch".into()),
            extra: Default::default(),
        });
    assert_eq!(bench.launcher.dispatch(cancel).await?, Outcome::Done);
    let cancelled = delivery.await??;
    assert_eq!(cancelled.ty(), BuildCancelled::TYPE, "{cancelled:?}");
    assert!(
        decode::<BuildCancelled>(&cancelled)?
            .reason
            .contains("wrong branch")
    );
    Ok(())
}

impl Bench {
    fn launcher_running(&self) -> usize {
        self.launcher_handler().running()
    }
    fn launcher_handler(&self) -> &JobLauncher {
        self.launcher.handler()
    }
}
