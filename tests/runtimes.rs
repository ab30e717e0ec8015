//! The runtime shims, run for real with the machine's Node.js and Python: a handler's return
//! value becomes the reply event, nothing → 202, a throw → 500 with the message, a handler past
//! its timeout → 504.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};
use klambda_test_support::http::post;
use klambda_test_support::process::{free_port, wait_healthy};
use klambda_test_support::repo;

struct Shim {
    child: Child,
    base: String,
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(program: &str, shim: &str, root: &Path, handler: &str) -> Result<Shim> {
    let port = free_port()?;
    let child = Command::new(program)
        .arg(repo::root().join("runtimes").join(shim))
        .env("PORT", port.to_string())
        .env("KLAMBDA_FUNCTION_ROOT", root)
        .env("KLAMBDA_HANDLER", handler)
        .env("KLAMBDA_FUNCTION_NAME", "hello")
        .env("KLAMBDA_TIMEOUT_SECONDS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("{program} is needed for the runtime tests: install it (apt-get install nodejs / python3)"))?;
    let mut shim = Shim {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let health = format!("{}/health", shim.base);
    wait_healthy(&health, &mut shim.child, Duration::from_secs(15))
        .await
        .with_context(|| format!("the {program} shim did not become healthy"))?;
    Ok(shim)
}

async fn invoke(shim: &Shim, mode: &str) -> Result<klambda_test_support::http::Reply> {
    post(
        &format!("{}/", shim.base),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "inv%201"),
            ("ce-source", "/tests"),
            ("ce-type", "com.example.greet"),
            ("content-type", "application/json"),
        ],
        format!("{{\"name\":\"world\",\"mode\":\"{mode}\"}}"),
    )
    .await
}

async fn contract(shim: Shim) -> Result<()> {
    let reply = invoke(&shim, "greet").await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("ce-type"), "com.example.greet.response");
    assert_eq!(reply.header("ce-id"), "inv%201.response");
    assert_eq!(reply.header("ce-source"), "/functions/hello");
    assert_eq!(
        reply.json()?,
        serde_json::json!({"hello": "world", "requestId": "inv 1"})
    );

    assert_eq!(invoke(&shim, "nothing").await?.status, 202);
    let thrown = invoke(&shim, "throw").await?;
    assert_eq!(thrown.status, 500);
    assert!(
        thrown.json()?["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("boom")
    );
    assert_eq!(invoke(&shim, "slow").await?.status, 504);
    let missing = post(
        &format!("{}/", shim.base),
        &[("content-type", "application/json")],
        "{}",
    )
    .await?;
    assert_eq!(missing.status, 400);
    Ok(())
}

#[tokio::test]
async fn nodejs_shim() -> Result<()> {
    let root = tempdir("node")?;
    std::fs::write(
        root.join("index.js"),
        r#"
exports.handler = async (event, context) => {
  if (event.mode === 'throw') throw new Error('boom');
  if (event.mode === 'slow') await new Promise((r) => setTimeout(r, 3000));
  if (event.mode === 'nothing') return undefined;
  return { hello: event.name, requestId: context.awsRequestId };
};
"#,
    )?;
    contract(start("node", "nodejs/shim.js", &root, "index.handler").await?).await
}

#[tokio::test]
async fn python_shim() -> Result<()> {
    let root = tempdir("python")?;
    std::fs::write(
        root.join("app.py"),
        r#"
import time

def handler(event, context):
    if event["mode"] == "throw":
        raise ValueError("boom")
    if event["mode"] == "slow":
        time.sleep(3)
    if event["mode"] == "nothing":
        return None
    return {"hello": event["name"], "requestId": context.aws_request_id}
"#,
    )?;
    contract(start("python3", "python/shim.py", &root, "app.handler").await?).await
}

fn tempdir(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("klambda-shim-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
