//! Golden fixtures: one JSON data document per event type, round-tripped through its Rust type
//! (parse, serialise, compare) and validated against the type's generated JSON Schema.
//!
//! A field renamed in Rust but not in the fixture, or a schema that refuses a real document,
//! fails here.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use klambda_events::catalogue::*;
use klambda_events::{CATALOGUE, Envelope, EventSpec, EventType, decode};
use serde_json::Value;

fn fixture(spec: &EventSpec) -> Result<Value> {
    // The package directory `cargo test` names at run time (see generated.rs).
    let path = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/fixtures")
        .join(format!("{}.json", spec.type_name));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("every catalogue type needs a fixture: {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// The compiled JSON Schema of a type's data.
fn validator(spec: &EventSpec) -> Result<jsonschema::Validator> {
    let schema = serde_json::to_value(spec.schema())?;
    jsonschema::validator_for(&schema)
        .map_err(|e| anyhow::anyhow!("schema of {} is invalid: {e}", spec.type_name))
}

/// Decodes the fixture as `T` through a real CloudEvent, re-encodes it, and compares.
fn round_trip<T: EventType>() -> Result<()> {
    let spec = klambda_events::catalogue::find(T::TYPE).context("type not in catalogue")?;
    let original = fixture(spec)?;
    let data: T::Data = serde_json::from_value(original.clone())
        .with_context(|| format!("fixture of {} does not parse", T::TYPE))?;
    let event = Envelope::new("fixture", "/fixtures").encode::<T>(&data);
    let decoded = decode::<T>(&event)?;
    let reencoded = serde_json::to_value(&decoded)?;
    assert_eq!(original, reencoded, "{} does not round-trip", T::TYPE);
    Ok(())
}

#[test]
fn every_fixture_round_trips_through_its_type() -> Result<()> {
    round_trip::<FunctionCreated>()?;
    round_trip::<FunctionUpdated>()?;
    round_trip::<FunctionDeleted>()?;
    round_trip::<FunctionRollback>()?;
    round_trip::<ParserStarted>()?;
    round_trip::<ParserCompleted>()?;
    round_trip::<ParserFailed>()?;
    round_trip::<ContextUploaded>()?;
    round_trip::<BuildStarted>()?;
    round_trip::<BuildCompleted>()?;
    round_trip::<BuildFailed>()?;
    round_trip::<BuildTimeout>()?;
    round_trip::<BuildCancel>()?;
    round_trip::<BuildCancelled>()?;
    round_trip::<BuildStopped>()?;
    round_trip::<ServiceCreated>()?;
    round_trip::<ServiceUpdated>()?;
    round_trip::<ServiceDeleted>()?;
    round_trip::<ServiceReady>()?;
    round_trip::<ServiceFailed>()?;
    round_trip::<StatusUpdated>()?;
    round_trip::<HealthCheck>()?;
    Ok(())
}

#[test]
fn every_fixture_validates_against_its_schema() -> Result<()> {
    for spec in CATALOGUE {
        let validator = validator(spec)?;
        let doc = fixture(spec)?;
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", spec.type_name);
    }
    Ok(())
}

#[test]
fn schemas_refuse_documents_missing_required_fields() -> Result<()> {
    // A schema that accepts anything would pass the test above; make sure they bite.
    for spec in CATALOGUE {
        let validator = validator(spec)?;
        assert!(
            !validator.is_valid(&serde_json::json!({})),
            "{} accepts an empty object",
            spec.type_name
        );
    }
    Ok(())
}
