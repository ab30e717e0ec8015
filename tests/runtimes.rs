//! The runtime shims, run for real with the machine's Node.js and Python: a handler's return
//! value becomes the reply event, nothing → 202, a throw → 500 with the message, a handler past
//! its timeout → 504; each failure is logged on stderr as a JSON line with its request id.

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
    /// Where the shim's stderr goes.
    stderr: std::path::PathBuf,
}

impl Shim {
    /// The JSON lines the shim wrote to stderr.
    fn failures(&self) -> Result<Vec<serde_json::Value>> {
        Ok(std::fs::read_to_string(&self.stderr)?
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect())
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(program: &str, shim: &str, root: &Path, handler: &str) -> Result<Shim> {
    let port = free_port()?;
    let stderr = root.join("stderr.log");
    let child = Command::new(program)
        .arg(repo::root().join("runtimes").join(shim))
        .env("PORT", port.to_string())
        .env("KLAMBDA_FUNCTION_ROOT", root)
        .env("KLAMBDA_HANDLER", handler)
        .env("KLAMBDA_FUNCTION_NAME", "hello")
        .env("KLAMBDA_TIMEOUT_SECONDS", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()
        .with_context(|| format!("{program} is needed for the runtime tests: install it (apt-get install nodejs / python3)"))?;
    let mut shim = Shim {
        child,
        base: format!("http://127.0.0.1:{port}"),
        stderr,
    };
    let health = format!("{}/health", shim.base);
    wait_healthy(&health, &mut shim.child, Duration::from_secs(15))
        .await
        .with_context(|| format!("the {program} shim did not become healthy"))?;
    Ok(shim)
}

async fn invoke(shim: &Shim, mode: &str) -> Result<klambda_test_support::http::Reply> {
    invoke_at(&shim.base, mode).await
}

async fn invoke_at(base: &str, mode: &str) -> Result<klambda_test_support::http::Reply> {
    invoke_path(base, "/", mode).await
}

/// An invocation at `path` (the subscriber URI's path and query).
async fn invoke_path(
    base: &str,
    path: &str,
    mode: &str,
) -> Result<klambda_test_support::http::Reply> {
    post(
        &format!("{base}{path}"),
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

/// What a shim does once a handler ran past its timeout.
#[derive(PartialEq)]
enum AfterTimeout {
    /// Serves on (an async handler's timeout frees what it held).
    ServesOn,
    /// Answers what is in flight, takes nothing new (503) and exits with 75 for a fresh process:
    /// a thread stuck in a handler cannot be stopped (Python).
    Recycles,
}

async fn contract(mut shim: Shim, after_timeout: AfterTimeout) -> Result<()> {
    let reply = invoke(&shim, "greet").await?;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("ce-type"), "com.example.greet.response");
    assert_eq!(reply.header("ce-id"), "inv%201.response");
    assert_eq!(reply.header("ce-source"), "/functions/hello");
    assert_eq!(
        reply.json()?,
        serde_json::json!({"hello": "world", "requestId": "inv 1"})
    );

    // What a cluster's Trigger puts on the subscriber URI: the reply's type, or no reply.
    let retyped = invoke_path(&shim.base, "/?replyType=com.example.greeted", "greet").await?;
    assert_eq!(retyped.status, 200, "{:?}", retyped.body);
    assert_eq!(retyped.header("ce-type"), "com.example.greeted");
    assert_eq!(retyped.header("ce-source"), "/functions/hello");
    let dropped = invoke_path(&shim.base, "/?reply=none", "greet").await?;
    assert_eq!(dropped.status, 202, "{:?}", dropped.body);
    assert!(dropped.body.is_empty(), "{:?}", dropped.body);
    let failed = invoke_path(&shim.base, "/?reply=none", "throw").await?;
    assert_eq!(failed.status, 500, "a failure is still one, to be retried");
    assert_eq!(
        invoke_path(&shim.base, "/other", "greet").await?.status,
        405
    );

    assert_eq!(invoke(&shim, "nothing").await?.status, 202);
    let thrown = invoke(&shim, "throw").await?;
    assert_eq!(thrown.status, 500);
    let problem = thrown.json()?;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("boom"),
        "{problem}"
    );
    // What the Lambda API turns into Lambda's error document: the error's type and stack.
    assert!(
        problem["errorType"]
            .as_str()
            .is_some_and(|t| t.contains("Error")),
        "{problem}"
    );
    assert!(
        problem["stackTrace"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{problem}"
    );
    // The failure is logged with the invocation's request id, message and stack.
    let logged = shim.failures()?;
    let error = logged
        .iter()
        .find(|l| l["kind"] == "error")
        .with_context(|| format!("no error line in {logged:?}"))?;
    assert_eq!(error["requestId"], "inv 1", "{error}");
    assert_eq!(error["level"], "error", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("boom"),
        "{error}"
    );
    assert!(
        error["stack"].as_array().is_some_and(|s| !s.is_empty()),
        "{error}"
    );
    let missing = post(
        &format!("{}/", shim.base),
        &[("content-type", "application/json")],
        "{}",
    )
    .await?;
    assert_eq!(missing.status, 400);

    // Sixteen calls past the timeout at once: each answered 504 (or 503 once the shim
    // recycles), never a dead function that says it is healthy.
    let slow: Vec<_> = (0..16)
        .map(|_| {
            let base = shim.base.clone();
            tokio::spawn(async move { invoke_at(&base, "slow").await })
        })
        .collect();
    for answer in slow {
        match answer.await? {
            Ok(reply) => assert!(
                reply.status == 504 || reply.status == 503,
                "{}",
                reply.status
            ),
            // A call that arrives once a recycling shim has exited finds no listener, and the
            // broker sends it again to the fresh process.
            Err(error) => assert!(
                after_timeout == AfterTimeout::Recycles,
                "a shim that serves on refused a call: {error}"
            ),
        }
    }
    let logged = shim.failures()?;
    assert!(
        logged
            .iter()
            .any(|l| l["kind"] == "timeout" && l["requestId"] == "inv 1"),
        "no timeout line with the request id in {logged:?}"
    );
    match after_timeout {
        AfterTimeout::ServesOn => {
            assert_eq!(invoke(&shim, "greet").await?.status, 200);
        }
        AfterTimeout::Recycles => {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let code = loop {
                if let Some(status) = shim.child.try_wait()? {
                    break status.code();
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the shim kept running with stuck workers"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(code, Some(75), "exits for a fresh process");
        }
    }
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
    contract(
        start("node", "nodejs/shim.js", &root, "index.handler").await?,
        AfterTimeout::ServesOn,
    )
    .await
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
    contract(
        start("python3", "python/shim.py", &root, "app.handler").await?,
        AfterTimeout::Recycles,
    )
    .await
}

fn tempdir(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("klambda-shim-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
