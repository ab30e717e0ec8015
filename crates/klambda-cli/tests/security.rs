//! The trust boundaries of the real `klambda up` (docs/SECURITY.md), attacked as an attacker
//! would: one row per attack, each with the answer it must get. The platform runs over the real
//! RabbitMQ, so forged events are also injected behind the edge, straight into the broker's
//! exchange, where the stages themselves must refuse them.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use cloudevents::{Event, EventBuilder as _};
use common::{Up, klambda, text, up};
use klambda_broker::amqp::Topology;
use klambda_broker::{AmqpBroker, trigger};
use klambda_cli::embedded::BROKER;
use klambda_events::catalogue::ServiceReady;
use klambda_events::data::ServiceReadiness;
use klambda_events::{Envelope, FunctionName, Stage};
use klambda_harness::codec::to_structured;
use klambda_harness::signing::EventKeys;
use klambda_test_support::fixtures::{build_completed, inline_function, parser_completed, runtime};
use klambda_test_support::http::{Reply, get_with, post, send as http_send};
use klambda_test_support::{jobs, rabbitmq, repo};
use serde_json::{Value, json};

const VICTIM: &str = "exports.handler = async () => ({ who: 'victim' });";
const ATTACKER: &str = "exports.handler = async () => ({ who: 'attacker' });";

/// The `Authorization` header `klambda up` asks of clients.
fn bearer(up: &Up) -> (&'static str, String) {
    ("authorization", format!("Bearer {}", up.token))
}

/// Posts `event` to the platform's ingress in structured mode, with the API token.
async fn send(platform: &Up, event: &Event) -> Result<Reply> {
    let (name, value) = bearer(platform);
    post(
        &format!("{}/", platform.endpoint),
        &[
            ("content-type", "application/cloudevents+json"),
            (name, &value),
        ],
        to_structured(event).to_string(),
    )
    .await
}

/// The platform's dead letters, by the id of the event in each.
async fn dead_letters(platform: &Up) -> Result<Vec<Value>> {
    let (name, value) = bearer(platform);
    let answer = get_with(
        &format!("{}/dead-letters", platform.endpoint),
        &[(name, &value)],
    )
    .await?;
    ensure!(answer.status == 200, "dead letters: {answer:?}");
    Ok(answer.json()?.as_array().cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_events_are_refused_at_the_edge_and_behind_it() -> Result<()> {
    let run = std::process::id();
    let data = std::env::temp_dir().join(format!("klambda-security-{run}"));
    let _ = std::fs::remove_dir_all(&data);
    let instance = rabbitmq::Instance::new("security");
    let url = rabbitmq::url();
    let platform = tokio::task::block_in_place(|| {
        up(
            &data.join("platform"),
            &["--broker", &url, "--instance", instance.name()],
        )
    })
    .context("klambda up over RabbitMQ (scripts/services.sh starts RabbitMQ)")?;

    // The victim's function, and an attacker's code claiming the victim's content digest.
    let victim = format!("victim-{run}");
    let node = runtime("nodejs20")?;
    let (_, victim_digest) =
        inline_function(&victim, node, "index.handler", &[("index.js", VICTIM)])?;
    let (attacker_spec, _) =
        inline_function(&victim, node, "index.handler", &[("index.js", ATTACKER)])?;
    let poison = |id: &str| parser_completed(id, attacker_spec.clone(), victim_digest.clone());

    // At the edge: only what clients may send.
    let ready = Envelope::new(
        format!("ready-{run}"),
        Stage::ServiceDeployer.event_source(),
    )
    .subject(victim.clone())
    .encode::<ServiceReady>(&ServiceReadiness {
        function: FunctionName::new(victim.clone())?,
        revision: format!("{victim}-00001"),
        url: "http://attacker.example".into(),
        runtime: None,
    });
    let job = json!({"apiVersion": "batch/v1", "kind": "Job",
                     "metadata": {"name": "klambda-forged", "namespace": "knative-lambda-builds"}});
    let own = cloudevents::EventBuilderV10::new()
        .id(format!("order-{run}"))
        .source("/shop")
        .ty("com.example.order.created")
        .data("application/json", json!({"order": 1}))
        .build()?;
    let rows: Vec<(&str, Event, u16)> = vec![
        (
            "a parser.completed carrying the victim's digest",
            poison("edge-1"),
            403,
        ),
        (
            "a build.completed of the attacker's code",
            build_completed(attacker_spec.clone(), victim_digest.clone(), "local:/tmp/x"),
            403,
        ),
        ("a service.ready pointing elsewhere", ready, 403),
        (
            "a Kubernetes Job status (a forged build outcome on a cluster)",
            jobs::job_event(
                &job,
                "job-1",
                klambda_events::external::APISERVER_RESOURCE_UPDATE,
            )?,
            403,
        ),
        ("a client's own event type", own, 202),
    ];
    for (attack, event, expected) in &rows {
        let answer = send(&platform, event).await?;
        ensure!(
            answer.status == *expected,
            "{attack}: answered {} where {expected} was expected: {:?}",
            answer.status,
            answer.body
        );
        if *expected == 403 {
            let problem = answer.json()?;
            ensure!(
                problem["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("internal-event-type")),
                "{attack}: not the problem document expected: {problem}"
            );
        }
    }

    // Behind the edge, straight into the broker's exchange: unsigned, signed with another key,
    // and signed with the platform's own key (a stage's key leaked) but carrying a digest that
    // is not its source's. Each is refused by the stage and dead-lettered with its reason.
    let triggers = trigger::load(&repo::root().join("eventing"), BROKER)?;
    let broker =
        AmqpBroker::connect(&url, Topology::new(BROKER, instance.name()), &triggers).await?;
    let platform_keys =
        EventKeys::parse(&std::fs::read_to_string(data.join("platform/event-keys"))?)?;
    let other_keys = EventKeys::parse("an-attackers-own-key-of-32-bytes-at-least")?;
    let unsigned = poison("inside-unsigned");
    let mut mis_signed = poison("inside-mis-signed");
    other_keys.sign(&mut mis_signed);
    let mut leaked_key = poison("inside-leaked-key");
    platform_keys.sign(&mut leaked_key);
    let inside = [
        ("inside-unsigned", unsigned, "403", "carries no signature"),
        ("inside-mis-signed", mis_signed, "403", "does not verify"),
        ("inside-leaked-key", leaked_key, "400", "digest"),
    ];
    for (_, event, _, _) in &inside {
        broker.publish(event).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters = dead_letters(&platform).await?;
        let found = inside
            .iter()
            .filter(|(id, ..)| letters.iter().any(|l| l["event"]["id"] == *id))
            .count();
        if found == inside.len() {
            break letters;
        }
        ensure!(
            Instant::now() < deadline,
            "not every forged event was dead-lettered within 30 s: {letters:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (id, _, code, reason) in &inside {
        let letter = letters
            .iter()
            .find(|l| l["event"]["id"] == *id)
            .context("found above")?;
        // The answer's body, base64 as Knative's dead-letter attributes carry it.
        let answer = letter["event"]["knativeerrordata"]
            .as_str()
            .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
            .map(|d| String::from_utf8_lossy(&d).into_owned())
            .unwrap_or_default();
        ensure!(
            letter["event"]["knativeerrorcode"] == *code && answer.contains(reason),
            "{id}: dead-lettered with {} {answer:?}, expected {code} with {reason:?}",
            letter["event"]["knativeerrorcode"]
        );
    }
    broker.close().await;

    // The poisoning came to nothing: the victim's own deploy builds its own code and serves it.
    let dir = data.join("victim");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("klambda.json"),
        json!({"name": victim, "runtime": "nodejs20", "handler": "index.handler"}).to_string(),
    )?;
    std::fs::write(dir.join("index.js"), VICTIM)?;
    let dir = dir.display().to_string();
    let deployed = tokio::task::block_in_place(|| klambda(&platform, &["deploy", &dir]))?;
    ensure!(deployed.status.success(), "{}", text(&deployed));
    ensure!(!text(&deployed).contains("cached"), "{}", text(&deployed));
    let status = tokio::task::block_in_place(|| {
        klambda(&platform, &["status", &victim, "--output", "json"])
    })?;
    let status: Value = serde_json::from_slice(&status.stdout)?;
    ensure!(
        status["digest"] == victim_digest.to_string(),
        "the forged events must have targeted the victim's digest: {status}"
    );
    let invoked = tokio::task::block_in_place(|| klambda(&platform, &["invoke", &victim]))?;
    let reply: Value = serde_json::from_slice(&invoked.stdout).with_context(|| text(&invoked))?;
    ensure!(reply["who"] == "victim", "the victim serves {reply}");

    drop(platform);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// Everything that changes or reveals state needs the platform's API token: without it, or with
/// a wrong one, `401` whatever the request carries; `/health` and `/metrics` stay open to
/// probes; the CLI without the token says how to give it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_but_health_and_metrics_needs_the_api_token() -> Result<()> {
    let data = std::env::temp_dir().join(format!("klambda-security-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let platform = tokio::task::block_in_place(|| up(&data, &[]))?;
    let token_file = data.join("api-token");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&token_file)?.permissions().mode();
    ensure!(mode & 0o777 == 0o600, "api-token has mode {mode:o}");

    let created = klambda_test_support::fixtures::parser_completed(
        "token-1",
        klambda_test_support::fixtures::node_function("token")?.0,
        klambda_test_support::fixtures::node_function("token")?.1,
    );
    let routes: [(http::Method, &str, &str); 9] = [
        (http::Method::POST, "/", "a submission"),
        (http::Method::GET, "/functions", "the function list"),
        (http::Method::GET, "/functions/token", "a function's status"),
        (
            http::Method::GET,
            "/functions/token/events",
            "a function's history (env, code)",
        ),
        (
            http::Method::GET,
            "/functions/token/logs",
            "a function's logs",
        ),
        (http::Method::GET, "/dead-letters", "the dead letters"),
        (
            http::Method::DELETE,
            "/dead-letters",
            "purging the dead letters",
        ),
        (http::Method::POST, "/events/token-1/replay", "a replay"),
        (http::Method::POST, "/dead-letters/1/redrive", "a redrive"),
    ];
    for credentials in [
        None,
        Some("Bearer not-the-token"),
        Some("Basic Zm9vOmJhcg=="),
    ] {
        for (method, path, what) in &routes {
            let mut request = http::Request::builder()
                .method(method.clone())
                .uri(format!("{}{path}", platform.endpoint))
                .header("content-type", "application/cloudevents+json");
            if let Some(credentials) = credentials {
                request = request.header("authorization", credentials);
            }
            let body = to_structured(&created).to_string();
            let answer = http_send(request.body(http_body_util::Full::new(body.into()))?).await?;
            ensure!(
                answer.status == 401
                    && answer.header("www-authenticate").starts_with("Bearer")
                    && answer.header("content-type") == "application/problem+json",
                "{what} with {credentials:?}: answered {} {:?}",
                answer.status,
                answer.body
            );
        }
    }
    for open in ["/health", "/metrics"] {
        let answer = get_with(&format!("{}{open}", platform.endpoint), &[]).await?;
        ensure!(answer.status == 200, "{open} answered {}", answer.status);
    }
    // With the token, the same requests go through.
    let (name, value) = bearer(&platform);
    let listed = get_with(
        &format!("{}/functions", platform.endpoint),
        &[(name, &value)],
    )
    .await?;
    ensure!(listed.status == 200, "with the token: {listed:?}");
    // Errors are problem documents, also those the HTTP layer answers: a body over the limit,
    // a query that does not parse.
    let oversize = post(
        &format!("{}/", platform.endpoint),
        &[("content-type", "application/json"), (name, &value)],
        vec![b' '; 3 * 1024 * 1024],
    )
    .await?;
    let bad_query = get_with(
        &format!("{}/dead-letters?limit=many", platform.endpoint),
        &[(name, &value)],
    )
    .await?;
    for (what, answer, status) in [("oversize", &oversize, 413), ("bad query", &bad_query, 400)] {
        ensure!(
            answer.status == status && answer.header("content-type") == "application/problem+json",
            "{what}: {} {} {:?}",
            answer.status,
            answer.header("content-type"),
            answer.body
        );
    }

    // The CLI without the token, away from the data directory: a clear way out, exit 1.
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(common::BIN)
            .args(["--endpoint", &platform.endpoint, "status"])
            .env_remove("KLAMBDA_TOKEN")
            .current_dir(std::env::temp_dir())
            .output()
    })?;
    ensure!(
        output.status.code() == Some(1) && text(&output).contains("KLAMBDA_TOKEN"),
        "{}",
        text(&output)
    );
    drop(platform);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// A secret value reaches the function's environment and nothing else: not an event, the status,
/// the logs, the runner's state or any file of the data directory but the secret's own; a
/// function naming a secret that is not set does not start, and says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_reach_the_function_and_nothing_else() -> Result<()> {
    const VALUE: &str = "s3cr3t-value-4242";
    let data =
        std::env::temp_dir().join(format!("klambda-security-secrets-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let platform = tokio::task::block_in_place(|| up(&data.join("platform"), &[]))?;

    // Set from stdin, as the docs say (out of the shell's history).
    let set = tokio::task::block_in_place(|| -> Result<std::process::Output> {
        use std::io::Write as _;
        let mut child = std::process::Command::new(common::BIN)
            .args([
                "--endpoint",
                &platform.endpoint,
                "secrets",
                "set",
                "db-password",
            ])
            .env("KLAMBDA_TOKEN", &platform.token)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(format!("{VALUE}\n").as_bytes())?;
        Ok(child.wait_with_output()?)
    })?;
    ensure!(set.status.success(), "{}", text(&set));
    let listed = tokio::task::block_in_place(|| klambda(&platform, &["secrets", "list"]))?;
    ensure!(
        text(&listed).contains("db-password") && !text(&listed).contains(VALUE),
        "{}",
        text(&listed)
    );

    let function = |name: &str, secret: &str| -> Result<String> {
        let dir = data.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("klambda.json"),
            json!({"name": name, "runtime": "nodejs20", "handler": "index.handler",
                   "env": {"PLAIN": "visible"}, "secrets": {"DB_PASSWORD": secret}})
            .to_string(),
        )?;
        std::fs::write(
            dir.join("index.js"),
            format!(
                // Compared reversed, so the code itself does not hold the value.
                "exports.handler = async () => ({{ matches: [...(process.env.DB_PASSWORD || '')].reverse().join('') === '{}', plain: process.env.PLAIN }});",
                VALUE.chars().rev().collect::<String>()
            ),
        )?;
        Ok(dir.display().to_string())
    };
    let dir = function("secretive", "db-password")?;
    let deployed = tokio::task::block_in_place(|| klambda(&platform, &["deploy", &dir]))?;
    ensure!(deployed.status.success(), "{}", text(&deployed));
    let invoked = tokio::task::block_in_place(|| klambda(&platform, &["invoke", "secretive"]))?;
    let reply: Value = serde_json::from_slice(&invoked.stdout).with_context(|| text(&invoked))?;
    ensure!(
        reply["matches"] == true && reply["plain"] == "visible",
        "the function's environment: {reply}"
    );

    // Nowhere else: what the CLI shows, and every file the platform wrote but the secret's own.
    let mut shown = String::new();
    for args in [
        vec!["events", "secretive", "--output", "json"],
        vec!["status", "secretive", "--output", "json"],
        vec!["logs", "secretive"],
        vec!["deploy", &dir],
    ] {
        let output = tokio::task::block_in_place(|| klambda(&platform, &args))?;
        shown.push_str(&text(&output));
    }
    ensure!(
        shown.contains("db-password"),
        "the reference is shown: {shown}"
    );
    ensure!(!shown.contains(VALUE), "a secret value was shown: {shown}");
    let secret_file = data.join("platform/secrets/db-password");
    let mut stack = vec![data.join("platform")];
    let mut read = 0;
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path)?.filter_map(|e| Some(e.ok()?.path())));
        } else if path != secret_file {
            read += 1;
            let bytes = std::fs::read(&path).unwrap_or_default();
            ensure!(
                !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
                "{} holds the secret value",
                path.display()
            );
        }
    }
    ensure!(read > 5, "only {read} files were read");

    // A secret that is not set: the deploy fails with the reason, nothing starts.
    let dir = function("unset", "never-set")?;
    let refused = tokio::task::block_in_place(|| klambda(&platform, &["deploy", &dir]))?;
    ensure!(
        !refused.status.success() && text(&refused).contains("never-set is not set"),
        "{}",
        text(&refused)
    );
    drop(platform);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// A function cannot read what the platform keeps (the status database, keys, tokens, secrets),
/// another function's code, or signal the platform; it can read its own code but not change it,
/// and write its own temporary directory. The separation needs the runner to be root (each
/// function then runs as a user of its own), as it is where the tests run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_sees_only_its_own_and_its_memory_is_bounded() -> Result<()> {
    ensure!(
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m))? == 0,
        "run the tests as root: functions get users of their own only under a root runner"
    );
    let data =
        std::env::temp_dir().join(format!("klambda-security-sandbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let platform_dir = data.join("platform");
    let platform = tokio::task::block_in_place(|| up(&platform_dir, &[]))?;
    let deploy = |name: &str, code: &str| -> Result<()> {
        tokio::task::block_in_place(|| common::deploy_node(&platform, &data, name, json!({}), code))
    };
    deploy(
        "neighbour",
        "exports.handler = async () => 'the neighbour';",
    )?;
    deploy(
        "prowler",
        r#"const fs = require('fs'); const os = require('os'); const path = require('path');
exports.handler = async (e) => {
  const attempt = (f) => { try { f(); return 'done'; } catch (err) { return err.code; } };
  const read = {};
  for (const p of e.paths) read[p] = attempt(() => fs.readFileSync(p));
  return {
    read,
    signal: attempt(() => process.kill(e.pid, 0)),
    tmp: attempt(() => fs.writeFileSync(path.join(os.tmpdir(), 'scratch'), 'mine')),
    ownCode: attempt(() => fs.readFileSync(path.join(__dirname, 'index.js'))),
    changeCode: attempt(() => fs.appendFileSync(path.join(__dirname, 'index.js'), '//')),
    uid: process.getuid(),
  };
};"#,
    )?;
    let status = tokio::task::block_in_place(|| {
        klambda(&platform, &["status", "neighbour", "--output", "json"])
    })?;
    let status: Value = serde_json::from_slice(&status.stdout)?;
    // A function over its memory limit is killed by the kernel, not the platform, and says so.
    let dir = data.join("hog");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("klambda.json"),
        json!({"name": "hog", "runtime": "nodejs20", "handler": "index.handler",
               "resources": {"memoryMib": 128}})
        .to_string(),
    )?;
    std::fs::write(
        dir.join("index.js"),
        "exports.handler = async () => { const kept = []; for (;;) kept.push(Buffer.alloc(16 << 20, 1)); };",
    )?;
    let dir_arg = dir.display().to_string();
    let deployed = tokio::task::block_in_place(|| klambda(&platform, &["deploy", &dir_arg]))?;
    ensure!(deployed.status.success(), "{}", text(&deployed));
    let hog = tokio::task::block_in_place(|| klambda(&platform, &["invoke", "hog"]))?;
    ensure!(
        !hog.status.success(),
        "the hog was answered: {}",
        text(&hog)
    );
    let started = std::time::Instant::now();
    loop {
        let logs = tokio::task::block_in_place(|| klambda(&platform, &["logs", "hog"]))?;
        if text(&logs).contains("went over its memory limit (128 MiB") {
            break;
        }
        ensure!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "no OOM report in the logs:\n{}",
            text(&logs)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Its status says so too, and the platform still answers.
    loop {
        let status =
            tokio::task::block_in_place(|| klambda(&platform, &["status", "hog", "-o", "json"]))?;
        ensure!(status.status.success(), "{}", text(&status));
        let status: Value = serde_json::from_slice(&status.stdout)?;
        if status["lastRestart"]["reason"] == "OOMKilled" {
            ensure!(status["phase"] == "ready", "{status}");
            ensure!(status["restarts"].as_u64() >= Some(1), "{status}");
            break;
        }
        ensure!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "no OOMKilled restart in the status: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let table = tokio::task::block_in_place(|| klambda(&platform, &["status"]))?;
    ensure!(
        table.status.success() && text(&table).contains("(OOMKilled)"),
        "{}",
        text(&table)
    );

    let neighbour = status["image"]
        .as_str()
        .and_then(|i| i.strip_prefix("local:"))
        .context("the neighbour's artifact")?;
    let private = [
        platform_dir.join("status.db"),
        platform_dir.join("event-keys"),
        platform_dir.join("api-token"),
        std::path::Path::new(neighbour).join("function/index.js"),
        std::path::Path::new(neighbour).join("build.log"),
    ];
    let paths: Vec<String> = private.iter().map(|p| p.display().to_string()).collect();
    ensure!(private.iter().all(|p| p.exists()), "{paths:?}");
    let event = json!({"paths": paths, "pid": platform.child.id()}).to_string();
    let invoked =
        tokio::task::block_in_place(|| klambda(&platform, &["invoke", "prowler", &event]))?;
    let seen: Value = serde_json::from_slice(&invoked.stdout).with_context(|| text(&invoked))?;
    for path in &paths {
        ensure!(seen["read"][path] == "EACCES", "{path}: {seen}");
    }
    ensure!(seen["signal"] == "EPERM", "signalling the platform: {seen}");
    ensure!(
        seen["tmp"] == "done" && seen["ownCode"] == "done" && seen["changeCode"] == "EACCES",
        "{seen}"
    );
    ensure!(
        seen["uid"].as_u64().is_some_and(|uid| uid >= 200_000),
        "{seen}"
    );
    drop(platform);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}
