//! `klambda.json`, the manifest of a function directory: a [`FunctionSubmission`] without its
//! `source` (the CLI packages the directory's files as the source).
//!
//! The manifest is strict where the submission event is lenient: an unknown key in a file a
//! person wrote is a typo (`"resources": {"timeout": 2}`) that would otherwise run with a
//! default, so [`schema`] refuses every key it does not name. The same schema is published at
//! `schemas/klambda.schema.json` for editors (`"$schema": "…/klambda.schema.json"` in the
//! manifest) and is what `klambda deploy` checks a manifest against, so the two cannot differ.

use serde_json::{Map, Value, json};

use crate::spec::FunctionSubmission;

/// The manifest's file name in a function directory.
pub const FILE_NAME: &str = "klambda.json";

/// Where the published schema lives in the repository.
pub const SCHEMA_PATH: &str = "schemas/klambda.schema.json";

/// The JSON Schema (draft 2020-12) of `klambda.json`: the submission's schema with every
/// reference inlined, `source` left out, no `null` for optional sections, an optional `$schema`
/// key for editors, and unknown keys refused at every level.
pub fn schema() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(FunctionSubmission))
        .unwrap_or_else(|_| json!({}));
    let defs = schema
        .as_object_mut()
        .and_then(|root| root.remove("$defs"))
        .unwrap_or_else(|| json!({}));
    let mut schema = inline(schema, &defs);
    if let Some(root) = schema.as_object_mut() {
        root.insert(
            "$id".into(),
            json!("urn:knative-lambda:schema:klambda.json:v1"),
        );
        root.insert("title".into(), json!("klambda.json"));
        root.insert(
            "description".into(),
            json!(
                "The manifest of a knative-lambda function directory: what `klambda deploy DIR` \
                 submits with the directory's files (docs/PARSER.md)."
            ),
        );
        if let Some(Value::Object(properties)) = root.get_mut("properties") {
            properties.remove("source");
            properties.insert(
                "$schema".into(),
                json!({"description": "This schema's address, for editors; not submitted.", "type": "string"}),
            );
        }
        if let Some(Value::Array(required)) = root.get_mut("required") {
            required.retain(|name| name != "source");
        }
    }
    schema
}

/// `value` with every `$ref` into `defs` replaced by its definition, `Option`s' `null`
/// alternatives dropped, and objects with named properties closed to others.
fn inline(value: Value, defs: &Value) -> Value {
    match value {
        Value::Object(mut object) => {
            if let Some(Value::String(reference)) = object.remove("$ref") {
                let name = reference.trim_start_matches("#/$defs/");
                if let Some(Value::Object(definition)) = defs.get(name) {
                    for (key, definition_value) in definition {
                        object
                            .entry(key.clone())
                            .or_insert_with(|| definition_value.clone());
                    }
                }
            }
            if let Some(Value::Array(alternatives)) = object.remove("anyOf") {
                let kept: Vec<Value> = alternatives
                    .into_iter()
                    .filter(|a| a.get("type") != Some(&json!("null")))
                    .collect();
                match <[Value; 1]>::try_from(kept) {
                    Ok([only]) => {
                        if let Value::Object(only) = inline(only, defs) {
                            for (key, value) in only {
                                object.entry(key).or_insert(value);
                            }
                        }
                    }
                    Err(kept) => {
                        object.insert("anyOf".into(), Value::Array(kept));
                    }
                }
            }
            if let Some(Value::Array(types)) = object.get("type") {
                let not_null: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
                if let Ok([only]) = <[Value; 1]>::try_from(not_null) {
                    object.insert("type".into(), only);
                }
            }
            let mut inlined: Map<String, Value> = object
                .into_iter()
                .map(|(key, value)| (key, inline(value, defs)))
                .collect();
            if inlined.contains_key("properties") {
                inlined.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(inlined)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(|v| inline(v, defs)).collect()),
        other => other,
    }
}

/// Every key path the manifest may hold (`resources.timeoutSeconds`, `triggers[].attributes`),
/// in schema order: what docs/PARSER.md must name.
pub fn key_paths() -> Vec<String> {
    fn walk(schema: &Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(Value::Object(properties)) = schema.get("properties") {
            for (key, property) in properties {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.push(path.clone());
                walk(property, &path, out);
                if let Some(items) = property.get("items") {
                    walk(items, &format!("{path}[]"), out);
                }
            }
        }
    }
    let mut paths = Vec::new();
    walk(&schema(), "", &mut paths);
    paths
}

/// The published schema file's text.
pub fn schema_file() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_is_inlined_and_every_object_is_closed() {
        let text = schema_file();
        assert!(!text.contains("$ref"), "{text}");
        assert!(!text.contains("\"null\""), "{text}");
        let schema = schema();
        assert_eq!(schema["additionalProperties"], json!(false));
        assert_eq!(
            schema["properties"]["resources"]["additionalProperties"],
            json!(false)
        );
        assert_eq!(
            schema["properties"]["resources"]["properties"]["timeoutSeconds"]["type"],
            json!("integer")
        );
        assert!(schema["properties"].get("source").is_none());
        assert_eq!(schema["required"], json!(["name", "runtime", "handler"]));
    }

    #[test]
    fn the_key_paths_reach_nested_sections() {
        let paths = key_paths();
        for path in [
            "name",
            "resources.timeoutSeconds",
            "scaling.concurrency",
            "build.timeoutSeconds",
            "triggers[].attributes",
        ] {
            assert!(paths.contains(&path.to_owned()), "{path}: {paths:?}");
        }
    }
}
