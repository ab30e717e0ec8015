//! The `Builder` trait is the whole seam to a build backend: a third builder is one `impl`, and
//! the stage answers its outcomes, caches them and cancels through it like any other. Builds are
//! counted at the builder, so a rebuild cannot hide behind a deduplicated status log.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, bail};
use cloudevents::AttributesReader as _;
use job_launcher::JobLauncher;
use job_launcher::builder::{BoxFuture, BuildOutcome, BuildRequest, Builder, BuilderError, Launch};
use klambda_events::catalogue::BuildCompleted;
use klambda_events::{EventType, decode};
use klambda_harness::{Handler as _, HandlerError, Harness, Outcome};
use klambda_storage::{LocalDir, ObjectStore as _};
use klambda_test_support::fixtures;
use tokio::sync::oneshot;

/// A builder that "builds" by naming an image after the digest, and counts its builds.
#[derive(Default)]
struct Stamp {
    builds: AtomicUsize,
}

impl Builder for Stamp {
    fn backend(&self) -> &'static str {
        "stamp"
    }

    fn launch(
        &self,
        request: BuildRequest,
        _cancel: oneshot::Receiver<String>,
    ) -> BoxFuture<Result<Launch, BuilderError>> {
        self.builds.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            Ok(Launch::Ended(BuildOutcome::Completed {
                image: format!("stamp:{}", request.digest.hex()),
            }))
        })
    }
}

#[tokio::test]
async fn a_third_builder_is_one_impl() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("klambda-seam-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let builder = Arc::new(Stamp::default());
    let launcher = Harness::new(JobLauncher::new(
        Arc::clone(&builder) as Arc<dyn Builder>,
        Arc::new(LocalDir::new(&dir)),
    ));
    let (spec, digest) = fixtures::node_function("stamped")?;
    let input = fixtures::context_uploaded(spec, digest.clone(), "file:///nowhere.tar.gz");

    for (attempt, cached) in [(1, false), (2, true)] {
        let Outcome::Reply(reply) = launcher.dispatch(input.clone()).await? else {
            bail!("attempt {attempt}: no reply");
        };
        assert_eq!(reply.ty(), BuildCompleted::TYPE, "attempt {attempt}");
        let built = decode::<BuildCompleted>(&reply)?;
        assert_eq!(built.image, format!("stamp:{}", digest.hex()));
        assert_eq!(built.cached, cached, "attempt {attempt}");
    }
    // The second delivery was a cache hit: built once.
    assert_eq!(builder.builds.load(Ordering::SeqCst), 1);
    // A status event of some other backend is not this builder's business.
    assert!(
        !launcher
            .handler()
            .accepts(klambda_events::external::APISERVER_RESOURCE_UPDATE)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A build record that is not what the platform wrote will not be fixed by a retry: the input
/// is refused once (422, dead-lettered with the reason), not retried until the broker gives up.
#[tokio::test]
async fn a_corrupt_build_record_is_unprocessable_not_retried() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("klambda-seam-corrupt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(LocalDir::new(&dir));
    let builder = Arc::new(Stamp::default());
    let launcher = Harness::new(JobLauncher::new(
        Arc::clone(&builder) as Arc<dyn Builder>,
        Arc::clone(&store) as _,
    ));
    let (spec, digest) = fixtures::node_function("corrupt")?;
    store
        .put(
            &klambda_storage::image_record_key(digest.hex()),
            b"{not json".to_vec().into(),
        )
        .await?;
    let input = fixtures::context_uploaded(spec, digest, "file:///nowhere.tar.gz");
    match launcher.dispatch(input).await {
        Err(error) => {
            assert!(
                matches!(error, HandlerError::Unprocessable(ref reason) if reason.contains("corrupt")),
                "{error}"
            );
            assert!(!error.is_retryable());
            assert_eq!(error.status().as_u16(), 422);
        }
        Ok(outcome) => bail!("a corrupt record was used: {outcome:?}"),
    }
    assert_eq!(builder.builds.load(Ordering::SeqCst), 0);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
