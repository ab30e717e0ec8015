//! A fake Kubernetes API server that kube-rs talks to over HTTP, for the stages' cluster code.
//!
//! It is strict where a real API server is, and checks what a real one would check for us:
//! - **RBAC**: the caller is the ServiceAccount named by `Impersonate-User`
//!   (`system:serviceaccount:<ns>:<name>`, set in the client's config); a request is refused
//!   with 403 unless a Role bound to it by a RoleBinding in the manifests given at start allows
//!   the verb on the resource (subresources as `pods/log`) in that namespace.
//! - **Schemas**: Knative objects are validated against the `openAPIV3Schema` of the real CRDs
//!   (with pruning: an undeclared field is an error); built-in kinds are decoded strictly: the
//!   object must survive a round trip through its k8s-openapi type unchanged
//!   ([`manifests::check_builtin`]), so an unknown or misspelt field is refused (422) instead of
//!   silently dropped.
//! - **Semantics** that the code relies on: `AlreadyExists` (409) on a second create,
//!   `NotFound` (404), label selectors (`key=value`, comma-separated) on lists, `metadata.uid`
//!   and `resourceVersion` set on create, server-side apply (`PATCH` with a `fieldManager`)
//!   creating or replacing the applied fields and bumping `generation` when the spec changed,
//!   deletion options recorded.
//!
//! Every request is recorded ([`FakeKube::requests`]) so tests assert what was called and the
//! least-privilege test compares the verbs used with the verbs granted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::http::TestServer;
use crate::manifests::{self, CrdSchemas};

/// One recorded request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Recorded {
    /// The caller (`system:serviceaccount:ns:name`).
    pub user: String,
    /// The RBAC verb (`get`, `list`, `create`, `patch`, `delete`, …).
    pub verb: String,
    /// The API group (`""` for core).
    pub group: String,
    /// The resource, with its subresource (`pods/log`).
    pub resource: String,
    /// The namespace.
    pub namespace: String,
    /// The object's name, if the request named one.
    pub name: Option<String>,
    /// Query string and body worth asserting (the DeleteOptions, the label selector).
    pub detail: String,
    /// The answer's status code.
    pub status: u16,
}

/// An RBAC rule of a Role.
#[derive(Debug, Clone)]
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

#[derive(Default)]
struct Inner {
    /// (group, resource, namespace, name) → object.
    objects: BTreeMap<(String, String, String, String), Value>,
    /// pod name → log text.
    logs: BTreeMap<String, String>,
    requests: Vec<Recorded>,
    next_version: u64,
}

/// The fake API server.
#[derive(Clone)]
pub struct FakeKube {
    inner: Arc<Mutex<Inner>>,
    /// user → (namespace, rules) of the Roles bound to it.
    grants: Arc<BTreeMap<String, Vec<(String, Rule)>>>,
    schemas: Arc<CrdSchemas>,
}

/// A served fake; dropped, it stops.
pub struct Served {
    /// The state, for seeding and assertions.
    pub kube: FakeKube,
    server: TestServer,
}

impl Served {
    /// The API server's base URL.
    pub fn url(&self) -> String {
        self.server.url("")
    }
}

fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message.into(), "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

/// The identity a ServiceAccount acts as.
pub fn service_account(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

impl FakeKube {
    /// A fake whose RBAC comes from the Roles and RoleBindings in `rbac_files`.
    pub fn new(rbac_files: &[std::path::PathBuf]) -> Result<Self> {
        let mut roles: BTreeMap<(String, String), Vec<Rule>> = BTreeMap::new();
        let mut bindings = Vec::new();
        for file in rbac_files {
            for doc in manifests::load_yaml(file)? {
                let ns = doc["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let name = doc["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                match doc["kind"].as_str() {
                    Some("Role") => {
                        let strings = |v: &Value| -> Vec<String> {
                            v.as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|s| s.as_str().map(str::to_owned))
                                .collect()
                        };
                        let rules = doc["rules"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|r| Rule {
                                groups: strings(&r["apiGroups"]),
                                resources: strings(&r["resources"]),
                                verbs: strings(&r["verbs"]),
                            })
                            .collect();
                        roles.insert((ns, name), rules);
                    }
                    Some("RoleBinding") => bindings.push((ns, doc)),
                    _ => {}
                }
            }
        }
        let mut grants: BTreeMap<String, Vec<(String, Rule)>> = BTreeMap::new();
        for (ns, binding) in bindings {
            let role = binding["roleRef"]["name"].as_str().unwrap_or_default();
            let rules = roles
                .get(&(ns.clone(), role.to_owned()))
                .with_context(|| format!("RoleBinding in {ns} refers to a missing Role {role}"))?;
            for subject in binding["subjects"].as_array().into_iter().flatten() {
                if subject["kind"] == "ServiceAccount" {
                    let user = service_account(
                        subject["namespace"].as_str().unwrap_or(&ns),
                        subject["name"].as_str().unwrap_or_default(),
                    );
                    let entry = grants.entry(user).or_default();
                    entry.extend(rules.iter().map(|r| (ns.clone(), r.clone())));
                }
            }
        }
        Ok(Self {
            inner: Arc::default(),
            grants: Arc::new(grants),
            schemas: Arc::new(CrdSchemas::knative()?),
        })
    }

    /// Serves the fake on a free port.
    pub async fn serve(self) -> Result<Served> {
        let router = Router::new().fallback(handle).with_state(self.clone());
        Ok(Served {
            kube: self,
            server: TestServer::start(router).await?,
        })
    }

    /// Every `(verb, group, resource)` the Roles grant `user`.
    pub fn granted(&self, user: &str) -> BTreeSet<(String, String, String)> {
        let mut granted = BTreeSet::new();
        for (_, rule) in self.grants.get(user).into_iter().flatten() {
            for group in &rule.groups {
                for resource in &rule.resources {
                    for verb in &rule.verbs {
                        granted.insert((verb.clone(), group.clone(), resource.clone()));
                    }
                }
            }
        }
        granted
    }

    /// Every `(verb, group, resource)` requested so far, whatever the answer: what the code
    /// under test uses, to compare with [`FakeKube::granted`].
    pub fn used(&self) -> BTreeSet<(String, String, String)> {
        self.requests()
            .into_iter()
            .map(|r| (r.verb, r.group, r.resource))
            .collect()
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner
            .lock()
            .map(|i| i.requests.clone())
            .unwrap_or_default()
    }

    /// The stored object, if any.
    pub fn object(
        &self,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let inner = self.inner.lock().ok()?;
        inner
            .objects
            .get(&(group.into(), resource.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// The stored objects of a resource in a namespace.
    pub fn objects(&self, group: &str, resource: &str, namespace: &str) -> Vec<Value> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        inner
            .objects
            .iter()
            .filter(|((g, r, n, _), _)| g == group && r == resource && n == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Puts `object` as the cluster's controllers would (no RBAC, no checks): pods a Job
    /// controller created, statuses a kubelet wrote.
    pub fn put(&self, group: &str, resource: &str, object: Value) {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Ok(mut inner) = self.inner.lock() {
            inner
                .objects
                .insert((group.into(), resource.into(), ns, name), object);
        }
    }

    /// Sets the log a pod's container printed.
    pub fn set_log(&self, pod: &str, log: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.logs.insert(pod.to_owned(), log.to_owned());
        }
    }

    /// Why `object` would be refused: a Knative kind against its CRD schema, a built-in kind
    /// decoded strictly; an unknown kind is refused too (the stages create nothing else).
    fn check(&self, object: &Value) -> Option<String> {
        if let Some(problems) = manifests::check_builtin(object) {
            return (!problems.is_empty()).then(|| problems.join("; "));
        }
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        if !self.schemas.knows(api_version, kind) {
            return Some(format!("the fake knows no schema for {api_version} {kind}"));
        }
        match self.schemas.check(object) {
            Ok(problems) if problems.is_empty() => None,
            Ok(problems) => Some(problems.join("; ")),
            Err(e) => Some(e.to_string()),
        }
    }

    fn allowed(&self, user: &str, verb: &str, group: &str, resource: &str, ns: &str) -> bool {
        self.grants
            .get(user)
            .into_iter()
            .flatten()
            .any(|(role_ns, rule)| {
                role_ns == ns
                    && rule.groups.iter().any(|g| g == group)
                    && rule.resources.iter().any(|r| r == resource)
                    && rule.verbs.iter().any(|v| v == verb)
            })
    }
}

/// The parts of an API path.
struct Target {
    group: String,
    version: String,
    namespace: String,
    resource: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (String::new(), (*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => ((*group).to_owned(), (*version).to_owned(), rest),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, resource, tail @ ..] => Some(Target {
            group,
            version,
            namespace: (*ns).to_owned(),
            resource: (*resource).to_owned(),
            name: tail.first().map(|s| (*s).to_owned()),
            sub: tail.get(1).map(|s| (*s).to_owned()),
        }),
        _ => None,
    }
}

fn matches_selector(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        term.split_once('=').is_some_and(|(k, v)| {
            object["metadata"]["labels"][k.trim_end_matches('=')].as_str() == Some(v)
        })
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(State(kube): State<FakeKube>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let user = parts
        .headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("system:anonymous")
        .to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let Some(target) = parse(parts.uri.path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route {}", parts.uri.path()),
        );
    };
    let verb = match (&parts.method, &target.name) {
        (&Method::GET, None) if query_param(&query, "watch").is_some() => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        (&Method::DELETE, None) => "deletecollection",
        _ => return status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "method"),
    }
    .to_owned();
    let resource = match &target.sub {
        Some(sub) => format!("{}/{sub}", target.resource),
        None => target.resource.clone(),
    };
    let detail = match verb.as_str() {
        "delete" => String::from_utf8_lossy(&body).into_owned(),
        _ => query.clone(),
    };
    let response = serve(&kube, &user, &verb, &target, &resource, &query, &body);
    if let Ok(mut inner) = kube.inner.lock() {
        inner.requests.push(Recorded {
            user,
            verb,
            group: target.group.clone(),
            resource,
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            detail,
            status: response.status().as_u16(),
        });
    }
    response
}

fn serve(
    kube: &FakeKube,
    user: &str,
    verb: &str,
    target: &Target,
    resource: &str,
    query: &str,
    body: &[u8],
) -> Response {
    let Target {
        group,
        version,
        namespace,
        name,
        ..
    } = target;
    if !kube.allowed(user, verb, group, resource, namespace) {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{resource}{} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" in the namespace \"{namespace}\"",
                name.as_ref()
                    .map(|n| format!(" \"{n}\""))
                    .unwrap_or_default()
            ),
        );
    }
    let key = |name: &str| {
        (
            group.clone(),
            target.resource.clone(),
            namespace.clone(),
            name.to_owned(),
        )
    };
    let Ok(mut inner) = kube.inner.lock() else {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "poisoned",
        );
    };
    match (verb, target.sub.as_deref()) {
        ("get", Some("log")) => {
            let pod = name.clone().unwrap_or_default();
            if !inner.objects.contains_key(&key(&pod)) {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("pods \"{pod}\" not found"),
                );
            }
            let log = inner.logs.get(&pod).cloned().unwrap_or_default();
            let tail = query_param(query, "tailLines").and_then(|n| n.parse::<usize>().ok());
            let lines: Vec<&str> = log.lines().collect();
            let start = tail.map_or(0, |n| lines.len().saturating_sub(n));
            (StatusCode::OK, lines[start..].join("\n")).into_response()
        }
        ("get", None) => {
            let name = name.clone().unwrap_or_default();
            match inner.objects.get(&key(&name)) {
                Some(object) => axum::Json(object.clone()).into_response(),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} \"{name}\" not found", target.resource),
                ),
            }
        }
        ("list", None) => {
            let selector = query_param(query, "labelSelector").unwrap_or_default();
            let items: Vec<Value> = inner
                .objects
                .iter()
                .filter(|((g, r, n, _), _)| g == group && *r == target.resource && n == namespace)
                .map(|(_, v)| v.clone())
                .filter(|v| matches_selector(v, &selector))
                .collect();
            let api_version = if group.is_empty() {
                version.clone()
            } else {
                format!("{group}/{version}")
            };
            axum::Json(json!({
                "apiVersion": api_version, "kind": "List",
                "metadata": { "resourceVersion": inner.next_version.to_string() },
                "items": items,
            }))
            .into_response()
        }
        ("create", None) => {
            let mut object: Value = match serde_json::from_slice(body) {
                Ok(object) => object,
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
            };
            if let Some(problems) = kube.check(&object) {
                return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", problems);
            }
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if object["metadata"]["namespace"]
                .as_str()
                .is_some_and(|n| n != namespace)
            {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the namespace of the object does not match the namespace of the request",
                );
            }
            if inner.objects.contains_key(&key(&name)) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{}.{group} \"{name}\" already exists", target.resource),
                );
            }
            inner.next_version += 1;
            let version = inner.next_version;
            object["metadata"]["namespace"] = json!(namespace);
            object["metadata"]["uid"] = json!(format!("uid-{version}"));
            object["metadata"]["resourceVersion"] = json!(version.to_string());
            inner.objects.insert(key(&name), object.clone());
            (StatusCode::CREATED, axum::Json(object)).into_response()
        }
        ("patch", None) => {
            // Server-side apply only (what the stages use): the applied object is the whole
            // desired state of this field manager, the only manager here.
            if query_param(query, "fieldManager").is_none() {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "fieldManager is required for apply patch",
                );
            }
            let applied: Value = match serde_json::from_slice(body) {
                Ok(object) => object,
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
            };
            if let Some(problems) = kube.check(&applied) {
                return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", problems);
            }
            let name = name.clone().unwrap_or_default();
            if applied["metadata"]["name"].as_str() != Some(name.as_str()) {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the name of the object does not match the name in the URL",
                );
            }
            inner.next_version += 1;
            let version = inner.next_version;
            let stored = match inner.objects.get(&key(&name)) {
                Some(existing) => {
                    let mut merged = existing.clone();
                    let generation = existing["metadata"]["generation"].as_i64().unwrap_or(1);
                    let changed = existing["spec"] != applied["spec"];
                    merged["spec"] = applied["spec"].clone();
                    for field in ["labels", "annotations"] {
                        merged["metadata"][field] = applied["metadata"][field].clone();
                    }
                    merged["metadata"]["generation"] = json!(generation + i64::from(changed));
                    merged["metadata"]["resourceVersion"] = json!(version.to_string());
                    merged
                }
                None => {
                    let mut created = applied;
                    created["metadata"]["namespace"] = json!(namespace);
                    created["metadata"]["uid"] = json!(format!("uid-{version}"));
                    created["metadata"]["generation"] = json!(1);
                    created["metadata"]["resourceVersion"] = json!(version.to_string());
                    created
                }
            };
            inner.objects.insert(key(&name), stored.clone());
            axum::Json(stored).into_response()
        }
        ("delete", None) => {
            let name = name.clone().unwrap_or_default();
            match inner.objects.remove(&key(&name)) {
                Some(object) => axum::Json(object).into_response(),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} \"{name}\" not found", target.resource),
                ),
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the fake does not serve {verb} {resource}"),
        ),
    }
}
