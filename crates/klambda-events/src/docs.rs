//! Generated artefacts of the contract: the JSON Schema files under `eventing/schemas/` and the
//! catalogue page `docs/EVENTS.md`.
//!
//! They are committed so that people and other languages can read them without Rust, and a test
//! (`tests/generated.rs`) regenerates them and fails on any difference, so they cannot go stale.

use std::fmt::Write as _;

use serde_json::Value;

use crate::catalogue::{CATALOGUE, EventSpec, Producer};

/// `(file name, contents)` of every JSON Schema under `eventing/schemas/`.
pub fn schema_files() -> Vec<(String, String)> {
    CATALOGUE
        .iter()
        .map(|spec| (spec.schema_file_name(), schema_json(spec)))
        .collect()
}

fn schema_json(spec: &EventSpec) -> String {
    let mut schema = spec.schema();
    schema.insert("$id".into(), Value::String(spec.dataschema()));
    schema.insert(
        "title".into(),
        Value::String(format!(
            "{} v{} ({})",
            spec.type_name, spec.version, spec.data_name
        )),
    );
    schema.insert(
        "description".into(),
        Value::String(spec.description.trim().into()),
    );
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// The contents of `docs/EVENTS.md`.
pub fn events_markdown() -> String {
    let mut md = String::from(
        "# Event catalogue\n\n\
         Generated from `crates/klambda-events` (`catalogue.rs`); do not edit by hand. Regenerate with\n\
         `KLAMBDA_BLESS=1 cargo test -p klambda-events --test generated`.\n\n\
         Every event is a CloudEvents 1.0 event with `datacontenttype: application/json`,\n\
         `subject` = the function name, and `dataschema` = `urn:knative-lambda:schema:<type>:v<N>`.\n\
         A receiver refuses a `dataschema` version it does not read (HTTP 400, dead-lettered) and\n\
         treats a missing `dataschema` as the current version. Unknown data fields are kept.\n\
         The JSON Schema of each type's data is in `eventing/schemas/<type>.v<N>.json`.\n\n\
         The status reporter records every event through its catch-all Trigger; it is not listed as\n\
         a consumer.\n\n\
         *Emitted as*: a `request` is posted by a client to the broker ingress (`202` once the broker\n\
         holds it); an `outcome` is a stage's reply to its input, and the input is not settled until\n\
         the broker confirmed it, so it arrives at least once whatever crashes; `progress` is\n\
         reported beside a reply, best effort, and nothing waits for it.\n\n\
         Only the platform emits outcomes and progress: each carries a `klambdasignature` extension\n\
         (`v1=<hex>`, HMAC-SHA256 with the platform's event key over `id`, `source`, `type`,\n\
         `subject`, `dataschema` and the data), and every stage refuses one whose signature does not\n\
         verify (HTTP 403, dead-lettered). Clients send requests only; `klambda up`'s ingress answers\n\
         403 to any other catalogue type (docs/SECURITY.md).\n\n\
         | type | version | data | emitted as | producers | consumer | meaning |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for spec in CATALOGUE {
        let producers: Vec<&str> = spec
            .producers
            .iter()
            .map(|p| match p {
                Producer::Stage(stage) => stage.service_name(),
                Producer::Client => "client",
            })
            .collect();
        let consumer = spec.consumer.map_or("—", |s| s.service_name());
        let _ = writeln!(
            md,
            "| `{}` | {} | `{}` | {} | {} | {} | {} |",
            spec.type_name,
            spec.version,
            spec.data_name,
            spec.emission.describe(),
            producers.join(", "),
            consumer,
            spec.description.trim()
        );
    }
    md.push_str(
        "\n`client` means anything outside the pipeline: the `klambda` CLI, the webhook gateway, or\n\
         a user's own producer posting to the broker.\n",
    );
    md
}
