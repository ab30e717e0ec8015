//! Manifests checked the way a Kubernetes API server would check them, without one.
//!
//! Two checks per object, against the CRD's `openAPIV3Schema`:
//! 1. validation (types, enums, required fields) through a JSON Schema validator;
//! 2. pruning: a field the schema does not declare (outside `x-kubernetes-preserve-unknown-
//!    fields`) would be silently dropped by the API server, so a typo such as `filters:` for
//!    `filter:` would pass validation and then do nothing. We report it as an error.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use serde::Deserialize as _;
use serde_json::Value;

/// Every YAML document in `path` (documents separated by `---`), empty ones skipped.
pub fn load_yaml(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let value =
            Value::deserialize(doc).with_context(|| format!("parsing {}", path.display()))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The objects the kustomization in `dir` renders: every listed resource file's documents, with
/// the `images` transformer applied (what `kubectl apply -k` sends, for the features we use).
pub fn render(dir: &Path) -> Result<Vec<Value>> {
    let kustomization = load_yaml(&dir.join("kustomization.yaml"))?;
    let kustomization = &kustomization[0];
    let images: std::collections::BTreeMap<String, String> = kustomization["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let name = i["newName"].as_str().or(i["name"].as_str())?;
            // kustomize's transformer: a digest wins over a tag.
            let pinned = match (i["digest"].as_str(), i["newTag"].as_str()) {
                (Some(digest), _) => format!("{name}@{digest}"),
                (None, Some(tag)) => format!("{name}:{tag}"),
                (None, None) => name.to_owned(),
            };
            Some((i["name"].as_str()?.to_owned(), pinned))
        })
        .collect();
    let mut objects = Vec::new();
    for resource in kustomization["resources"].as_array().into_iter().flatten() {
        let path = dir.join(resource.as_str().unwrap_or_default());
        for mut doc in load_yaml(&path)? {
            let containers = &mut doc["spec"]["template"]["spec"]["containers"];
            for container in containers.as_array_mut().into_iter().flatten() {
                let image = container["image"].as_str().unwrap_or_default().to_owned();
                if let Some(pinned) = images.get(&image) {
                    container["image"] = Value::String(pinned.clone());
                }
            }
            objects.push(doc);
        }
    }
    Ok(objects)
}

/// The CRD schemas, by `(apiVersion, kind)`.
pub struct CrdSchemas {
    schemas: HashMap<(String, String), Value>,
}

impl CrdSchemas {
    /// Loads every `*.crd.yaml` under `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut schemas = HashMap::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if !path.to_string_lossy().ends_with(".crd.yaml") {
                continue;
            }
            for crd in load_yaml(&path)? {
                let group = crd["spec"]["group"].as_str().unwrap_or_default().to_owned();
                let kind = crd["spec"]["names"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
                    let name = version["name"].as_str().unwrap_or_default();
                    let schema = version["schema"]["openAPIV3Schema"].clone();
                    schemas.insert((format!("{group}/{name}"), kind.clone()), schema);
                }
            }
        }
        Ok(Self { schemas })
    }

    /// Loads the Knative CRDs from the shared folder.
    pub fn knative() -> Result<Self> {
        Self::load(&crate::repo::shared_dir()?.join("schemas/knative"))
    }

    /// Whether a schema for this `apiVersion` and `kind` is known.
    pub fn knows(&self, api_version: &str, kind: &str) -> bool {
        self.schemas
            .contains_key(&(api_version.to_owned(), kind.to_owned()))
    }

    /// Every problem the API server would find with `object` (empty when it is accepted as is).
    pub fn check(&self, object: &Value) -> Result<Vec<String>> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let schema = self
            .schemas
            .get(&(api_version.to_owned(), kind.to_owned()))
            .ok_or_else(|| anyhow!("no CRD schema for {api_version} {kind}"))?;
        let validator = jsonschema::validator_for(schema)
            .map_err(|e| anyhow!("the CRD schema of {kind} does not compile: {e}"))?;
        let mut problems: Vec<String> = validator
            .iter_errors(object)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        for (key, value) in object.as_object().into_iter().flatten() {
            if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                pruned_fields(value, &schema["properties"][key], key, &mut problems);
            }
        }
        Ok(problems)
    }
}

/// Like the API server: `x-kubernetes-preserve-unknown-fields` keeps undeclared keys at its own
/// level only; declared children are still pruned by their own schemas.
fn pruned_fields(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
    match value {
        Value::Object(map) => {
            let properties = schema["properties"].as_object();
            let additional = &schema["additionalProperties"];
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                match properties.and_then(|p| p.get(key)) {
                    Some(child_schema) => pruned_fields(child, child_schema, &child_path, out),
                    None if additional.is_object() => {
                        pruned_fields(child, additional, &child_path, out)
                    }
                    None if preserve => {}
                    None => out.push(format!(
                        "{child_path}: field not declared in the schema; the API server would drop it"
                    )),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pruned_fields(item, &schema["items"], &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks a built-in Kubernetes object strictly: it must decode into its k8s-openapi type and
/// survive the round trip unchanged, so an unknown or misspelt field (which a real API server
/// would drop, or refuse under `fieldValidation=Strict`) is reported. `None` for kinds this
/// does not know (Knative kinds go through [`CrdSchemas`]).
pub fn check_builtin(object: &Value) -> Option<Vec<String>> {
    use k8s_openapi::Resource;
    use k8s_openapi::api::{apps, batch, core, networking, rbac};

    fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
        object: &Value,
    ) -> Vec<String> {
        match serde_json::from_value::<T>(object.clone()) {
            Err(e) => vec![e.to_string()],
            Ok(typed) => {
                let back = serde_json::to_value(typed).unwrap_or_default();
                let mut problems = Vec::new();
                lost_fields(object, &back, "", &mut problems);
                problems
                    .into_iter()
                    .map(|field| format!("unknown field {field}"))
                    .collect()
            }
        }
    }
    fn is<T: Resource>(api_version: &str, kind: &str) -> bool {
        api_version == T::API_VERSION && kind == T::KIND
    }
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    type Check = fn(&Value) -> Vec<String>;
    let checks: [(bool, Check); 11] = [
        (
            is::<core::v1::Namespace>(api_version, kind),
            round_trip::<core::v1::Namespace>,
        ),
        (
            is::<core::v1::ServiceAccount>(api_version, kind),
            round_trip::<core::v1::ServiceAccount>,
        ),
        (
            is::<core::v1::ConfigMap>(api_version, kind),
            round_trip::<core::v1::ConfigMap>,
        ),
        (
            is::<core::v1::Secret>(api_version, kind),
            round_trip::<core::v1::Secret>,
        ),
        (
            is::<core::v1::Pod>(api_version, kind),
            round_trip::<core::v1::Pod>,
        ),
        (
            is::<rbac::v1::Role>(api_version, kind),
            round_trip::<rbac::v1::Role>,
        ),
        (
            is::<rbac::v1::RoleBinding>(api_version, kind),
            round_trip::<rbac::v1::RoleBinding>,
        ),
        (
            is::<rbac::v1::ClusterRole>(api_version, kind),
            round_trip::<rbac::v1::ClusterRole>,
        ),
        (
            is::<batch::v1::Job>(api_version, kind),
            round_trip::<batch::v1::Job>,
        ),
        (
            is::<networking::v1::NetworkPolicy>(api_version, kind),
            round_trip::<networking::v1::NetworkPolicy>,
        ),
        (
            is::<apps::v1::Deployment>(api_version, kind),
            round_trip::<apps::v1::Deployment>,
        ),
    ];
    checks
        .into_iter()
        .find(|(matches, _)| *matches)
        .map(|(_, check)| check(object))
}

/// Fields of `sent` that `kept` does not have (what a typed decode dropped).
fn lost_fields(sent: &Value, kept: &Value, path: &str, problems: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => lost_fields(value, other, &here, problems),
                    None if !value.is_null() => problems.push(here),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                lost_fields(x, y, &format!("{path}[{i}]"), problems);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn trigger(spec: Value) -> Value {
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
               "metadata": {"name": "t"}, "spec": spec})
    }

    #[test]
    fn accepts_a_valid_trigger_and_refuses_broken_ones() -> Result<()> {
        let schemas = CrdSchemas::knative()?;
        let subscriber = json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "s"}});
        let ok = trigger(
            json!({"broker": "b", "filter": {"attributes": {"type": "x"}}, "subscriber": subscriber}),
        );
        assert_eq!(schemas.check(&ok)?, Vec::<String>::new());

        let wrong_type = trigger(json!({"broker": 7, "subscriber": subscriber}));
        assert!(!schemas.check(&wrong_type)?.is_empty());

        // `filter` declares only `attributes`: a misspelt key below it would be pruned.
        let typo = trigger(
            json!({"broker": "b", "filter": {"atributes": {"type": "x"}}, "subscriber": subscriber}),
        );
        let problems = schemas.check(&typo)?;
        assert!(
            problems.iter().any(|p| p.contains("spec.filter.atributes")),
            "{problems:?}"
        );
        Ok(())
    }
}
