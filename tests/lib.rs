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
