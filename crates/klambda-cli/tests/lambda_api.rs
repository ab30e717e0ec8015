//! The AWS Lambda API of the real `klambda up`, driven by what Lambda users already have: the
//! real AWS CLI (version 1) and boto3, from PyPI, installed by scripts/services.sh into
//! /var/tmp/knative-lambda/tools/aws. They sign with SigV4: access key id `klambda`, the
//! platform's API token as the secret access key.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use common::{Up, deploy_node, klambda, text, up};
use klambda_test_support::aws::TOOLS as AWS_TOOLS;
use serde_json::{Value, json};

/// Greets; throws when asked to; logs each call.
const HELLO: &str = r#"exports.handler = async (event, context) => {
  console.log(`hello called for ${event.name} (${context.awsRequestId})`);
  if (event.fail) throw new TypeError(`boom for ${event.name}`);
  return { hello: event.name };
};"#;

/// Always fails, saying so each time.
const BROKEN: &str = r#"exports.handler = async (event) => {
  console.log(`broken attempt for ${event.job}`);
  throw new Error(`broken ${event.job}`);
};"#;

fn scratch() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("klambda-lambda-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn deploy(platform: &Up, root: &Path, name: &str, code: &str) -> Result<()> {
    deploy_node(platform, root, name, json!({}), code)
}

/// `aws lambda ARGS` against `platform`, signed with `secret`.
fn aws_with(platform: &Up, secret: &str, args: &[&str]) -> Result<Output> {
    klambda_test_support::aws::lambda(&platform.endpoint, secret, args)
}

fn aws(platform: &Up, args: &[&str]) -> Result<Output> {
    aws_with(platform, &platform.token, args)
}

/// `aws lambda invoke`: what it printed, and the payload it wrote.
fn invoke(platform: &Up, root: &Path, args: &[&str]) -> Result<(Value, String)> {
    let out = root.join("response.json");
    let _ = std::fs::remove_file(&out);
    let mut all = vec!["invoke"];
    all.extend_from_slice(args);
    let out_arg = out.to_string_lossy().into_owned();
    all.push(&out_arg);
    let invoked = aws(platform, &all)?;
    ensure!(
        invoked.status.success(),
        "aws lambda {all:?}: {}",
        text(&invoked)
    );
    let printed: Value = serde_json::from_slice(&invoked.stdout)?;
    Ok((printed, std::fs::read_to_string(&out).unwrap_or_default()))
}

/// Waits until `name`'s output holds `needle` `count` times.
fn logged(platform: &Up, name: &str, needle: &str, count: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let logs = text(&klambda(platform, &["logs", name])?);
        let seen = logs.matches(needle).count();
        if seen >= count {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("{name} logged {needle:?} {seen} times, not {count}:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_aws_cli_and_boto3_invoke_list_and_get_functions() -> Result<()> {
    let root = scratch()?;
    let platform = up(&root.join("data"), &[])?;
    deploy(&platform, &root, "hello", HELLO)?;

    // RequestResponse: the handler's result is the payload; the revision is the version.
    let (printed, payload) = invoke(
        &platform,
        &root,
        &["--function-name", "hello", "--payload", r#"{"name":"ada"}"#],
    )?;
    ensure!(printed["StatusCode"] == 200, "{printed}");
    ensure!(printed["ExecutedVersion"] == "1", "{printed}");
    ensure!(printed.get("FunctionError").is_none(), "{printed}");
    ensure!(
        serde_json::from_str::<Value>(&payload)? == json!({"hello": "ada"}),
        "{payload}"
    );

    // The log tail: this invocation's lines, base64.
    let (printed, _) = invoke(
        &platform,
        &root,
        &[
            "--function-name",
            "hello",
            "--log-type",
            "Tail",
            "--payload",
            r#"{"name":"tail"}"#,
        ],
    )?;
    let log = base64::engine::general_purpose::STANDARD
        .decode(printed["LogResult"].as_str().unwrap_or_default())?;
    let log = String::from_utf8(log)?;
    ensure!(log.contains("hello called for tail"), "{log}");
    ensure!(
        !log.contains("hello called for ada"),
        "only this invocation's lines: {log}"
    );

    // A throwing handler: 200, X-Amz-Function-Error, Lambda's error document.
    let (printed, payload) = invoke(
        &platform,
        &root,
        &[
            "--function-name",
            "hello",
            "--payload",
            r#"{"name":"bob","fail":true}"#,
        ],
    )?;
    ensure!(printed["StatusCode"] == 200, "{printed}");
    ensure!(printed["FunctionError"] == "Unhandled", "{printed}");
    let error: Value = serde_json::from_str(&payload)?;
    ensure!(error["errorMessage"] == "boom for bob", "{error}");
    ensure!(error["errorType"] == "TypeError", "{error}");
    ensure!(
        error["stackTrace"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{error}"
    );

    // DryRun and Event.
    let (printed, _) = invoke(
        &platform,
        &root,
        &["--function-name", "hello", "--invocation-type", "DryRun"],
    )?;
    ensure!(printed["StatusCode"] == 204, "{printed}");
    let (printed, _) = invoke(
        &platform,
        &root,
        &[
            "--function-name",
            "hello",
            "--invocation-type",
            "Event",
            "--payload",
            r#"{"name":"later"}"#,
        ],
    )?;
    ensure!(printed["StatusCode"] == 202, "{printed}");
    logged(&platform, "hello", "hello called for later", 1)?;

    // Lambda's errors: an unknown function, a payload over 6 MB, a wrong secret, no signature.
    let unknown = aws(
        &platform,
        &["invoke", "--function-name", "nobody", "/dev/null"],
    )?;
    ensure!(
        !unknown.status.success() && text(&unknown).contains("ResourceNotFoundException"),
        "{}",
        text(&unknown)
    );
    let big = root.join("big.json");
    std::fs::write(
        &big,
        format!("{{\"pad\":\"{}\"}}", "x".repeat(6 * 1024 * 1024)),
    )?;
    let file = format!("file://{}", big.display());
    let too_large = aws(
        &platform,
        &[
            "invoke",
            "--function-name",
            "hello",
            "--payload",
            &file,
            "/dev/null",
        ],
    )?;
    ensure!(
        !too_large.status.success() && text(&too_large).contains("RequestTooLargeException"),
        "{}",
        text(&too_large)
    );
    let forged = aws_with(
        &platform,
        "not-the-token",
        &["invoke", "--function-name", "hello", "/dev/null"],
    )?;
    ensure!(
        !forged.status.success() && text(&forged).contains("InvalidSignatureException"),
        "{}",
        text(&forged)
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let unsigned = runtime.block_on(klambda_test_support::http::post(
        &format!(
            "{}/2015-03-31/functions/hello/invocations",
            platform.endpoint
        ),
        &[],
        "{}",
    ))?;
    ensure!(unsigned.status == 403, "{unsigned:?}");
    ensure!(
        unsigned.header("x-amzn-errortype") == "MissingAuthenticationTokenException",
        "{unsigned:?}"
    );

    // GetFunction and ListFunctions, in Lambda's shape.
    let got = aws(&platform, &["get-function", "--function-name", "hello"])?;
    ensure!(got.status.success(), "{}", text(&got));
    let got: Value = serde_json::from_slice(&got.stdout)?;
    let configuration = &got["Configuration"];
    ensure!(configuration["FunctionName"] == "hello", "{got}");
    ensure!(configuration["Runtime"] == "nodejs20", "{got}");
    ensure!(configuration["Handler"] == "index.handler", "{got}");
    ensure!(configuration["State"] == "Active", "{got}");
    ensure!(configuration["Version"] == "1", "{got}");
    let status: Value =
        serde_json::from_slice(&klambda(&platform, &["status", "hello", "-o", "json"])?.stdout)?;
    let digest = status["digest"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("sha256:");
    let sha = base64::engine::general_purpose::STANDARD
        .decode(configuration["CodeSha256"].as_str().unwrap_or_default())?;
    ensure!(
        hex::encode(sha) == digest,
        "CodeSha256 is the content digest: {got} {status}"
    );
    let listed = aws(&platform, &["list-functions"])?;
    ensure!(listed.status.success(), "{}", text(&listed));
    let listed: Value = serde_json::from_slice(&listed.stdout)?;
    let names: Vec<&str> = listed["Functions"]
        .as_array()
        .context("Functions")?
        .iter()
        .filter_map(|f| f["FunctionName"].as_str())
        .collect();
    ensure!(names == ["hello"], "{listed}");

    // boto3, as an SDK user writes it.
    let script = format!(
        r#"
import json, boto3
client = boto3.client("lambda", endpoint_url="{endpoint}", region_name="us-east-1",
                      aws_access_key_id="klambda", aws_secret_access_key="{token}")
answer = client.invoke(FunctionName="hello", Payload=json.dumps({{"name": "boto"}}))
print(json.dumps({{"status": answer["StatusCode"], "payload": json.loads(answer["Payload"].read()),
                  "async": client.invoke(FunctionName="hello", InvocationType="Event", Payload=b"{{}}")["StatusCode"],
                  "state": client.get_function(FunctionName="hello")["Configuration"]["State"]}}))
"#,
        endpoint = platform.endpoint,
        token = platform.token
    );
    let boto = Command::new(Path::new(AWS_TOOLS).join("python"))
        .args(["-c", &script])
        .output()?;
    ensure!(boto.status.success(), "boto3: {}", text(&boto));
    let boto: Value = serde_json::from_slice(&boto.stdout)?;
    ensure!(
        boto == json!({"status": 200, "payload": {"hello": "boto"}, "async": 202, "state": "Active"}),
        "{boto}"
    );

    // An asynchronous invocation of a failing function: tried three times (Lambda's two
    // retries), then dead-lettered with the reason.
    deploy(&platform, &root, "broken", BROKEN)?;
    let (printed, _) = invoke(
        &platform,
        &root,
        &[
            "--function-name",
            "broken",
            "--invocation-type",
            "Event",
            "--payload",
            r#"{"job":"j-9"}"#,
        ],
    )?;
    ensure!(printed["StatusCode"] == 202, "{printed}");
    logged(&platform, "broken", "broken attempt for j-9", 3)?;
    let started = Instant::now();
    let letters = loop {
        let listed = klambda(
            &platform,
            &["dlq", "list", "--function", "broken", "-o", "json"],
        )?;
        let letters: Value = serde_json::from_slice(&listed.stdout)?;
        if letters.as_array().is_some_and(|l| !l.is_empty()) {
            break letters;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "no dead letter for broken"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let letter = &letters[0]["event"];
    ensure!(letter["knativeerrorcode"] == "500", "{letter}");
    ensure!(letter["data"]["job"] == "j-9", "{letter}");
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
