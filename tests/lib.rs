//! The workspace's cross-function tests live in `tests/*.rs` beside this file; this library holds
//! what several of them share.

use anyhow::Result;
use klambda_test_support::http::post;

/// Invokes the function serving at `url` with a CloudEvent whose data is `{"name": name}`;
/// fails unless it answers 200, and returns its reply's data.
pub async fn invoke(url: &str, name: &str) -> Result<serde_json::Value> {
    let reply = post(
        &format!("{url}/"),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "invoke-1"),
            ("ce-source", "/tests"),
            ("ce-type", "com.example.hello"),
            ("content-type", "application/json"),
        ],
        serde_json::json!({ "name": name }).to_string(),
    )
    .await?;
    anyhow::ensure!(
        reply.status == 200,
        "{url} answered {}: {:?}",
        reply.status,
        reply.body
    );
    reply.json()
}

/// A fresh data directory for `test` under the system's temp dir (emptied if it exists).
pub fn data_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("klambda-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The embedded platform (what `klambda up` runs) for `test`, with the repository's Triggers,
/// `customize`d, served over HTTP as `klambda up` serves it.
pub async fn serve_embedded(
    test: &str,
    customize: impl FnOnce(klambda_cli::embedded::Settings) -> klambda_cli::embedded::Settings,
) -> Result<(
    klambda_cli::embedded::Platform,
    klambda_test_support::http::TestServer,
)> {
    let settings = customize(klambda_cli::embedded::Settings::new(
        data_dir(test),
        klambda_test_support::repo::root().join("eventing"),
    ));
    let platform = klambda_cli::embedded::Platform::start(&settings).await?;
    let server = klambda_test_support::http::TestServer::start(klambda_cli::server::router(
        platform.clone(),
    ))
    .await?;
    Ok((platform, server))
}

/// `klambda deploy examples/<example>` against `server` (with `store` for S3 sources); the
/// CLI's exit code.
pub async fn deploy_example(
    server: &klambda_test_support::http::TestServer,
    example: &str,
    store: Option<&klambda_storage::S3Store>,
) -> Result<i32> {
    klambda_cli::client::deploy(
        &klambda_cli::client::Platform::new(&server.url("")),
        &klambda_test_support::repo::root()
            .join("examples")
            .join(example),
        klambda_cli::client::Output::Json,
        store,
    )
    .await
}
