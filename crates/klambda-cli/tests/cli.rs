//! The real `klambda` binary end to end: `klambda up` on a free port, both examples deployed and
//! invoked, an unchanged redeploy served from the cache, status, events, replay, delete.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use common::{BIN, Up, klambda, text, up};
use klambda_events::EventType as _;
use klambda_events::catalogue::ServiceReady;
use klambda_test_support::process::free_port;
use klambda_test_support::repo;

/// The platform's `/metrics` text, read over a plain HTTP/1.0 request.
fn scrape(up: &Up) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let address = up.endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").context("an HTTP answer")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    Ok(body.to_owned())
}

/// The sum of the samples of `name` whose labels contain `labels`.
fn metric_sum(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && line.contains(labels)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// How many delivery attempts the platform's broker made so far.
fn deliveries(up: &Up) -> Result<f64> {
    Ok(metric_sum(
        &scrape(up)?,
        "klambda_broker_delivery_attempts_total",
        "",
    ))
}

/// Waits until the broker made at least `at_least` delivery attempts in all, and then none for
/// half a second: everything sent has been handled. Fails after 20 s.
fn settle(up: &Up, at_least: f64) -> Result<()> {
    let started = Instant::now();
    let mut last = deliveries(up)?;
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = deliveries(up)?;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if now >= at_least && quiet_since.elapsed() >= Duration::from_millis(500) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("the platform did not settle: {last} delivery attempts, waited for {at_least}");
        }
    }
}

#[test]
fn deploy_invoke_redeploy_replay_delete() -> Result<()> {
    let data = std::env::temp_dir().join(format!("klambda-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let up = up(&data, &[])?;

    for (example, name) in [
        ("examples/hello-python", "hello-python"),
        ("examples/hello-node", "hello-node"),
    ] {
        let deployed = klambda(&up, &["deploy", example])?;
        assert!(
            deployed.status.success(),
            "deploy {example}: {}",
            text(&deployed)
        );
        let log = text(&deployed);
        for stage in [
            "parser.completed",
            "context.uploaded",
            "build.completed",
            "service.created",
            "service.ready",
        ] {
            assert!(
                log.contains(stage),
                "deploy {example} did not show {stage}:\n{log}"
            );
        }
        let invoked = klambda(&up, &["invoke", name, r#"{"name":"Knative"}"#])?;
        assert!(
            invoked.status.success(),
            "invoke {name}: {}",
            text(&invoked)
        );
        let reply: serde_json::Value =
            serde_json::from_slice(&invoked.stdout).with_context(|| text(&invoked))?;
        assert_eq!(reply["message"], "Hello, Knative!", "{reply}");
    }
    // Logs: the build's pip output and the running shim's own output.
    let logs = klambda(&up, &["logs", "hello-python"])?;
    let log = text(&logs);
    assert!(logs.status.success(), "{log}");
    assert!(log.contains("== build b-") && log.contains("six"), "{log}");
    assert!(
        log.contains("== runtime hello-python-00001") && log.contains("serving"),
        "{log}"
    );

    // The Python example's dependency was installed at build time.
    let reply = klambda(&up, &["invoke", "hello-python"])?;
    let reply: serde_json::Value = serde_json::from_slice(&reply.stdout)?;
    assert_eq!(reply["six"], "1.16.0");

    // `--output json` on invoke: one document with the status, the reply's type and its data.
    let invoked = klambda(&up, &["invoke", "hello-node", "{}", "--output", "json"])?;
    let answer: serde_json::Value =
        serde_json::from_slice(&invoked.stdout).with_context(|| text(&invoked))?;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["reply"]["message"], "Hello, world!", "{answer}");

    // A reader that goes away (`klambda events NAME | head`) ends the command quietly, exit 0.
    for command in [
        &["events", "hello-node"][..],
        &["status"],
        &["logs", "hello-node"],
    ] {
        let mut child = Command::new(BIN)
            .arg("--endpoint")
            .arg(&up.endpoint)
            .env("KLAMBDA_TOKEN", &up.token)
            .args(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Closed before the command has its answer from the platform: its first write fails.
        drop(child.stdout.take());
        let output = child.wait_with_output()?;
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{command:?}: {said}");
        assert!(said.is_empty(), "{command:?} said: {said}");
    }

    // An unchanged redeploy: no build (the digest's build record is a cache hit), same revision.
    let again = klambda(&up, &["deploy", "examples/hello-node"])?;
    let log = text(&again);
    assert!(again.status.success(), "{log}");
    assert!(
        log.contains("(cached)"),
        "an unchanged redeploy must not build:\n{log}"
    );
    assert!(!log.contains("build.started"), "{log}");

    let status = klambda(&up, &["status", "hello-node", "--output", "json"])?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(status["phase"], "ready");
    assert_eq!(status["revision"], "hello-node-00001");
    // What actually runs it: the machine's Node.js, of the major version the runtime id names.
    let node = Command::new("node")
        .args(["-p", "process.versions.node"])
        .output()?;
    let node = String::from_utf8_lossy(&node.stdout).trim().to_owned();
    assert_eq!(status["runtime"], format!("Node.js {node}"), "{status}");
    let table = text(&klambda(&up, &["status"])?);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("RUNTIME"), "{table}");
    assert!(table.contains(&format!("Node.js {node}")), "{table}");
    // Every row's URL column starts where the header's does, whatever the widths.
    let column = header.find("URL / LAST ERROR").context("the header")?;
    for row in table.lines().skip(1) {
        assert!(
            row.get(column..).is_some_and(|r| r.starts_with("http://")),
            "{table}"
        );
    }

    // A runtime id whose version is not installed here: refused, saying what was found.
    let other = if node.starts_with("20.") {
        "nodejs22"
    } else {
        "nodejs20"
    };
    let dir = data.join("other-node");
    copy_example("examples/hello-node", &dir)?;
    let manifest = std::fs::read_to_string(dir.join("klambda.json"))?
        .replace("\"nodejs20\"", &format!("\"{other}\""))
        .replace("\"hello-node\"", "\"other-node\"");
    std::fs::write(dir.join("klambda.json"), manifest)?;
    let refused = klambda(&up, &["deploy", &dir.display().to_string()])?;
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("runtimeUnavailable")
            && said.contains(&format!("found Node.js {node}"))
            && said.contains("KLAMBDA_INTERPRETERS"),
        "{said}"
    );

    // Replay a recorded submission: the log keeps it once and nothing changes.
    let events = klambda(&up, &["events", "hello-node", "--output", "json"])?;
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&events.stdout)
            .lines()
            .next()
            .context("events")?,
    )?;
    let id = first["event"]["id"].as_str().context("an event id")?;
    let replayed = klambda(&up, &["replay", id, "--output", "json"])?;
    assert!(replayed.status.success(), "{}", text(&replayed));
    let replayed: serde_json::Value =
        serde_json::from_slice(&replayed.stdout).with_context(|| text(&replayed))?;
    assert_eq!(replayed["replayed"], id);
    // The replayed journey ends in a service.ready of its own; the commands below follow the
    // function's events and take the first ending they see, so they start once it is in.
    let ready_count = |events: &std::process::Output| {
        String::from_utf8_lossy(&events.stdout)
            .lines()
            .filter(|line| line.contains(ServiceReady::TYPE))
            .count()
    };
    let before = ready_count(&events);
    let started = Instant::now();
    while ready_count(&klambda(
        &up,
        &["events", "hello-node", "--output", "json"],
    )?) <= before
        && started.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(50));
    }

    // Commands about what does not exist say so, fail, and change nothing: a rollback to a
    // revision that is not there leaves the function serving and ready; a rollback or delete of
    // a function never created leaves no entry behind.
    let nowhere = klambda(&up, &["rollback", "hello-node", "--to", "hello-node-00009"])?;
    assert!(!nowhere.status.success(), "{}", text(&nowhere));
    assert!(
        text(&nowhere).contains("RevisionMissing"),
        "{}",
        text(&nowhere)
    );
    let status = klambda(&up, &["status", "hello-node", "--output", "json"])?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(status["phase"], "ready", "{status}");
    assert!(klambda(&up, &["invoke", "hello-node"])?.status.success());
    for args in [["rollback", "nosuchfn"], ["delete", "nevercreated"]] {
        let refused = klambda(&up, &args)?;
        assert_eq!(
            refused.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&refused)
        );
        assert!(
            text(&refused).contains("no function named"),
            "{}",
            text(&refused)
        );
    }
    let listed = text(&klambda(&up, &["status"])?);
    assert!(
        !listed.contains("nosuchfn") && !listed.contains("nevercreated"),
        "{listed}"
    );

    let deleted = klambda(&up, &["delete", "hello-node"])?;
    assert!(deleted.status.success(), "{}", text(&deleted));
    let status = klambda(&up, &["status", "hello-node", "--output", "json"])?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(status["phase"], "deleted");
    let gone = klambda(&up, &["invoke", "hello-node"])?;
    assert!(
        !gone.status.success(),
        "a deleted function must not answer: {}",
        text(&gone)
    );
    let again = klambda(&up, &["delete", "hello-node"])?;
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    Ok(())
}

#[test]
fn client_commands_say_what_to_do_when_nothing_runs() -> Result<()> {
    let output = Command::new(BIN)
        .args(["--endpoint", "http://127.0.0.1:1", "status"])
        .output()?;
    assert!(!output.status.success());
    assert!(text(&output).contains("klambda up"), "{}", text(&output));
    Ok(())
}

#[test]
fn a_manifest_is_checked_strictly_and_every_problem_named_before_anything_is_sent() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("klambda-cli-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("klambda.json"),
        r#"{"name": "typo", "runtime": "nodejs22", "handler": "index.handler",
            "resources": {"timeout": 2, "timeoutSeconds": 0.5}, "colour": "red",
            "triggers": [{"attributes": {"type": "t"}, "filters": []}]}"#,
    )?;
    std::fs::write(dir.join("index.js"), "exports.handler = async () => 1;")?;
    // Nothing listens at the endpoint: a manifest problem must be found before any request.
    let output = Command::new(BIN)
        .args(["--endpoint", "http://127.0.0.1:1", "deploy"])
        .arg(&dir)
        .output()?;
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    for expected in [
        "resources.timeout: unknown key; expected one of: cpuMillis, memoryMib, timeoutSeconds",
        "resources.timeoutSeconds: 0.5 is not of type \"integer\"",
        "triggers[0].filters: unknown key; expected one of: attributes",
        "colour: unknown key",
    ] {
        assert!(said.contains(expected), "missing {expected:?} in:\n{said}");
    }
    assert!(!said.contains("klambda up"), "no request was tried: {said}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn completions_are_printed_for_each_shell_and_complete_the_commands() -> Result<()> {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = Command::new(BIN).args(["completions", shell]).output()?;
        assert!(output.status.success(), "{shell}: {}", text(&output));
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("rollback"),
            "{shell}: the script names the commands"
        );
    }
    // Bash loads the script and completes `klambda de` to the commands starting so.
    let script = format!(
        "source <({BIN} completions bash); COMP_WORDS=(klambda de); COMP_CWORD=1; \
         _klambda klambda de klambda; echo \"${{COMPREPLY[@]}}\""
    );
    let output = Command::new("bash").args(["-c", &script]).output()?;
    let offered = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", text(&output));
    let mut offered: Vec<&str> = offered.split_whitespace().collect();
    offered.sort_unstable();
    assert_eq!(offered, ["delete", "deploy"], "{}", text(&output));
    let unknown = Command::new(BIN).args(["completions", "nosh"]).output()?;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown).contains("possible values"),
        "{}",
        text(&unknown)
    );
    Ok(())
}

/// Copies an example to a temporary directory so a test can change it.
fn copy_example(example: &str, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(repo::root().join(example))? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

#[test]
fn update_rollback_failures_and_stage_replays() -> Result<()> {
    let data = std::env::temp_dir().join(format!("klambda-cli-life-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let up = up(&data.join("platform"), &[])?;
    let dir = data.join("fn");
    copy_example("examples/hello-node", &dir)?;
    let dir_arg = dir.display().to_string();
    assert!(klambda(&up, &["deploy", &dir_arg])?.status.success());

    // `events` of an unknown function says so and fails, like `status`; a reader that stops
    // early (`| head -1`) ends the listing quietly, without a panic.
    let unknown = klambda(&up, &["events", "nosuch"])?;
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(
        text(&unknown).contains("no function named nosuch"),
        "{}",
        text(&unknown)
    );
    let mut listing = Command::new(BIN)
        .args(["--endpoint", &up.endpoint, "events", "hello-node"])
        .env("KLAMBDA_TOKEN", &up.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    drop(listing.stdout.take());
    let listed = listing.wait_with_output()?;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&listed.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // Replay every stage's input event three times: still one build and one revision.
    let events = klambda(&up, &["events", "hello-node", "--output", "json"])?;
    let ids: Vec<String> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            let ty = e["event"]["type"].as_str().unwrap_or_default();
            [
                "function.created",
                "parser.completed",
                "context.uploaded",
                "build.completed",
            ]
            .iter()
            .any(|s| ty.ends_with(s))
        })
        .filter_map(|e| e["event"]["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 4, "{}", String::from_utf8_lossy(&events.stdout));
    let before = deliveries(&up)?;
    for id in &ids {
        for _ in 0..3 {
            assert!(klambda(&up, &["replay", id])?.status.success());
        }
    }
    // Each replay is delivered, and answered; wait until the broker has nothing left to do.
    settle(&up, before + 12.0)?;
    // Counted where the work is done, not from the status log (which deduplicates replayed
    // ids): the effects the stages count, and revisions at the runner (numbers are never
    // reused).
    let metrics = scrape(&up)?;
    let effect = |name: &str| {
        metric_sum(
            &metrics,
            "klambda_effects_total",
            &format!("effect=\"{name}\""),
        )
    };
    let runner = data.join("platform/runner/hello-node.json");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&runner)?)?;
    assert_eq!(
        (
            effect("build_started"),
            effect("revision_deployed"),
            metric_sum(&metrics, "klambda_build_outcomes_total", ""),
            state["next"].as_u64()
        ),
        (1.0, 1.0, 1.0, Some(1)),
        "replays must not rebuild or redeploy"
    );

    // Update the source: a new revision serves the new code.
    std::fs::write(
        dir.join("index.js"),
        "exports.handler = async (e) => { if (e.boom) throw new Error('kaboom'); return { message: 'v2' }; };",
    )?;
    let updated = klambda(&up, &["deploy", &dir_arg])?;
    assert!(updated.status.success(), "{}", text(&updated));
    assert!(
        text(&updated).contains("hello-node-00002"),
        "{}",
        text(&updated)
    );
    let reply: serde_json::Value =
        serde_json::from_slice(&klambda(&up, &["invoke", "hello-node"])?.stdout)?;
    assert_eq!(reply["message"], "v2");

    // A throwing handler: an error reply with its message, a failing exit code.
    let thrown = klambda(&up, &["invoke", "hello-node", r#"{"boom":true}"#])?;
    assert!(!thrown.status.success());
    assert!(text(&thrown).contains("kaboom"), "{}", text(&thrown));
    // `klambda logs` shows the failure with the invocation's request id.
    let logs = text(&klambda(&up, &["logs", "hello-node"])?);
    assert!(
        logs.lines()
            .any(|line| line.contains("\"requestId\":\"invoke-")
                && line.contains("\"kind\":\"error\"")
                && line.contains("kaboom")),
        "{logs}"
    );

    // Rollback: the first revision serves again.
    let back = klambda(&up, &["rollback", "hello-node"])?;
    assert!(back.status.success(), "{}", text(&back));
    let reply: serde_json::Value = serde_json::from_slice(
        &klambda(&up, &["invoke", "hello-node", r#"{"name":"again"}"#])?.stdout,
    )?;
    assert_eq!(reply["message"], "Hello, again!");

    // A syntax error: build.failed with the compiler's message, exit code 1, still serving.
    std::fs::write(dir.join("index.js"), "exports.handler = async (e) => {")?;
    let broken = klambda(&up, &["deploy", &dir_arg])?;
    assert!(!broken.status.success());
    let log = text(&broken);
    assert!(
        log.contains("build.failed") && log.contains("SyntaxError"),
        "{log}"
    );
    let status = klambda(&up, &["status", "hello-node", "--output", "json"])?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(status["phase"], "failed");
    assert!(
        status["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("compileError"),
        "{status}"
    );
    // …and the compiler's own words, not only the command that failed.
    assert!(
        status["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("SyntaxError: Unexpected end of input"),
        "{status}"
    );
    let still = klambda(&up, &["invoke", "hello-node", r#"{"name":"still"}"#])?;
    assert!(
        still.status.success(),
        "the serving revision keeps serving: {}",
        text(&still)
    );
    // `--endpoint` is global: it works after the subcommand too, also on commands that take
    // the S3 flags (`--s3-endpoint`): the command reaches the platform (the deploy's own outcome,
    // the broken code above, is not what this checks).
    let status = Command::new(BIN)
        .args(["status", "--endpoint", &up.endpoint])
        .env("KLAMBDA_TOKEN", &up.token)
        .output()?;
    assert!(status.status.success(), "{}", text(&status));
    let deploy = Command::new(BIN)
        .args(["deploy", &dir_arg, "--endpoint", &up.endpoint])
        .env("KLAMBDA_TOKEN", &up.token)
        .current_dir(repo::root())
        .output()?;
    assert!(
        text(&deploy).contains("updating hello-node"),
        "{}",
        text(&deploy)
    );
    Ok(())
}

/// `klambda up` logs, traces and serves with the stages' settings, and refuses a bad one by
/// name instead of starting without logs.
#[test]
fn up_refuses_a_bad_telemetry_setting_by_name() -> Result<()> {
    let data = std::env::temp_dir().join(format!("klambda-cli-telemetry-{}", std::process::id()));
    let output = Command::new(BIN)
        .args(["up", "--port", &free_port()?.to_string(), "--data-dir"])
        .arg(&data)
        .env("KLAMBDA_LOG_FORMAT", "yaml")
        .env("KLAMBDA_MAX_CONNECTIONS", "none")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    // Every bad setting named, the connection limits as well as the telemetry.
    for setting in ["KLAMBDA_LOG_FORMAT", "KLAMBDA_MAX_CONNECTIONS"] {
        assert!(stderr.contains(setting), "{setting}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}
