//! The README as a user reads it: every shell block marked `<!-- doctest -->` runs verbatim,
//! line by line, against a real `klambda up`, and `scripts/demo` prints what the README's sample
//! output (marked `<!-- demo-output -->`) shows.

mod common;

use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use common::{BIN, text, up};
use klambda_test_support::repo;

/// The body of every fenced block that follows a line holding `marker`.
fn blocks_after(readme: &str, marker: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if !line.contains(marker) {
            continue;
        }
        let Some(fence) = lines.next().filter(|l| l.starts_with("```")) else {
            continue;
        };
        let _ = fence;
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        blocks.push(body.join("\n"));
    }
    blocks
}

#[test]
fn the_marked_readme_commands_run_as_written() -> Result<()> {
    let readme = std::fs::read_to_string(repo::root().join("README.md"))?;
    let blocks = blocks_after(&readme, "<!-- doctest -->");
    ensure!(
        !blocks.is_empty(),
        "no block of README.md is marked <!-- doctest -->"
    );
    let data = std::env::temp_dir().join(format!("klambda-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let up = up(&data, &[])?;
    let bin_dir = std::path::Path::new(BIN)
        .parent()
        .context("the binary's directory")?;
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    for block in &blocks {
        for line in block.lines() {
            let command = line.split(" #").next().unwrap_or_default().trim();
            if command.is_empty() || command.starts_with('#') {
                continue;
            }
            let output = Command::new("bash")
                .args(["-o", "pipefail", "-c", command])
                .current_dir(repo::root())
                .env("PATH", &path)
                .env("KLAMBDA_ENDPOINT", &up.endpoint)
                .env("KLAMBDA_TOKEN", &up.token)
                .output()?;
            ensure!(
                output.status.success(),
                "README.md: `{command}` failed ({}):\n{}",
                output.status,
                text(&output)
            );
            ran += 1;
        }
    }
    ensure!(ran >= 5, "only {ran} README commands ran");
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// What a demo transcript says, without what changes from run to run: each command, and for
/// each deploy the event types in order; for each invoke the reply's keys.
fn shape(transcript: &str) -> Vec<String> {
    let mut shape = Vec::new();
    let mut reply = String::new();
    for line in transcript.lines() {
        if let Some(command) = line.strip_prefix("$ ") {
            if !reply.is_empty() {
                shape.push(keys(&reply));
                reply.clear();
            }
            shape.push(command.to_owned());
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [_, "ms", ty, ..] if ty.contains('.') => shape.push((*ty).to_owned()),
            ["creating" | "updating", name, ..] => shape.push(format!("creating/updating {name}")),
            _ if line.starts_with('{') || !reply.is_empty() => {
                reply.push_str(line);
                reply.push('\n');
            }
            _ => {}
        }
    }
    if !reply.is_empty() {
        shape.push(keys(&reply));
    }
    shape
}

/// The keys of a JSON reply, or the text when it is not JSON.
fn keys(reply: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(reply) {
        Ok(serde_json::Value::Object(object)) => {
            format!("reply {:?}", object.keys().collect::<Vec<_>>())
        }
        _ => format!("reply {}", reply.trim()),
    }
}

#[test]
fn the_demo_prints_what_the_readme_shows() -> Result<()> {
    let readme = std::fs::read_to_string(repo::root().join("README.md"))?;
    let sample = blocks_after(&readme, "<!-- demo-output -->")
        .into_iter()
        .next()
        .context("README.md has no block marked <!-- demo-output -->")?;
    // The demo as it ships, with the binary this test built (so it does not run cargo).
    let output = Command::new("bash")
        .arg(repo::root().join("scripts/demo"))
        .env("KLAMBDA_BIN", BIN)
        .env_remove("KLAMBDA_ENDPOINT")
        .env_remove("KLAMBDA_TOKEN")
        .output()?;
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "scripts/demo failed:\n{}",
        text(&output)
    );
    let expected = shape(&sample);
    let actual = shape(&printed);
    ensure!(
        expected.len() >= 6,
        "the sample shows too little: {expected:?}"
    );
    // The sample is one excerpt of the transcript: it appears in it, in order.
    let found = actual
        .windows(expected.len())
        .any(|window| window == expected.as_slice());
    ensure!(
        found,
        "README.md's sample output is not what scripts/demo prints.\nsample: {expected:#?}\ndemo:   {actual:#?}\n{printed}"
    );
    Ok(())
}

#[test]
fn the_shape_of_a_transcript_ignores_what_changes_between_runs() {
    let one = "$ klambda deploy x\ncreating x (1 file)\n       9 ms  function.created\n     114 ms  parser.completed   digest sha256:fb\n$ klambda invoke x\n{\n  \"message\": \"hi\"\n}\n";
    let two = "$ klambda deploy x\ncreating x (1 file)\n      12 ms  function.created\n      99 ms  parser.completed   digest sha256:aa\n$ klambda invoke x\n{ \"message\": \"other\" }\n";
    assert_eq!(shape(one), shape(two));
    assert_eq!(shape(one).len(), 6, "{:?}", shape(one));
    assert_ne!(
        shape(one),
        shape("$ klambda deploy x\n  9 ms  parser.failed\n")
    );
}
