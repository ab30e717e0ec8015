//! The whole pipeline with S3-compatible storage (a real `s3s-fs`, installed by
//! `scripts/services.sh`), as `klambda up --store s3://… --s3-endpoint …` runs it: `klambda
//! deploy` uploads the function's source to the bucket, the context uploader fetches and unpacks
//! it, streams the context back, the builder reads it from S3, and the function answers.

use anyhow::{Context as _, Result};
use klambda_cli::embedded;
use klambda_events::data::Phase;
use klambda_storage::{S3Settings, S3Store};
use klambda_test_support::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_example_deploys_through_s3_storage() -> Result<()> {
    let server = S3Server::start("pipeline").await?;
    server.bucket("klambda")?;
    let s3 = S3Settings {
        endpoint: Some(server.endpoint.clone()),
        credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        ..S3Settings::new("klambda")
    };
    let (platform, http) =
        klambda_tests::serve_embedded("pipeline-s3", |settings| embedded::Settings {
            s3: Some(s3.clone()),
            ..settings
        })
        .await?;
    let store = S3Store::new(&s3);
    let code = klambda_tests::deploy_example(&http, "hello-node", Some(&store)).await?;
    assert_eq!(code, 0, "hello-node did not become ready");
    let state = platform
        .store
        .function("hello-node")
        .await?
        .context("the function is known")?;
    assert_eq!(state.phase, Phase::Ready, "{state:?}");
    // The source and the context are objects in the bucket.
    let objects = store.list("").await?;
    let keys: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        keys.iter().any(|k| k.starts_with("sources/")),
        "no uploaded source in {keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("contexts/")),
        "no context in {keys:?}"
    );
    let url = state.url.context("a ready function has a URL")?;
    let reply = klambda_tests::invoke(&url, "bucket").await?;
    assert_eq!(reply["message"], "Hello, bucket!");
    // Deploying the same files again uploads nothing new: the source key is their digest.
    let before = store.list("sources/").await?;
    let again = klambda_tests::deploy_example(&http, "hello-node", Some(&store)).await?;
    assert_eq!(again, 0);
    assert_eq!(store.list("sources/").await?, before);
    assert_eq!(server.unfinished_uploads()?, 0);
    http.shutdown().await;
    Ok(())
}
