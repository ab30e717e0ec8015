//! The cluster deployer: each function is a Knative Service (`serving.knative.dev/v1`) plus one
//! Trigger per filter on the platform's Broker, written by server-side apply.
//!
//! Like the cluster builder, nothing here waits: service-deployer applies the Service and
//! answers; whether the new revision became ready arrives as the Service's status change, an
//! ApiServerSource event (`eventing/sources/function-services.yaml`), which
//! [`readiness`] turns into `service.ready` or `service.failed`.
//!
//! Every apply sends the whole desired Service: the template (image pinned by digest, env,
//! resources, `containerConcurrency`, autoscaling annotations, a hash of all that), and traffic
//! to the latest revision. A change of any of it makes Knative cut a new revision; the same
//! template changes nothing (a replay). Before an update, the revision serving now is recorded
//! in an annotation, which `function.rollback` pins traffic to.
//!
//! API calls, in the functions' namespace (deploy/rbac/service-deployer.yaml grants exactly
//! these): `get`, `patch` (apply) and `delete` Services; `get` Revisions (rollback); `list`,
//! `patch` and `delete` Triggers.

use klambda_events::{ContentDigest, FunctionName, FunctionSpec};
use klambda_kube::{FIELD_MANAGER, KubeError, labels};
use kube::Api;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use cloudevents::Event;

use crate::deployer::{
    BoxFuture, DeployError, Deployer, Deployment, NotReady, Observation, Revision,
};

/// Annotation on the Service: the revision that served before the latest apply.
pub const PREVIOUS_REVISION: &str = "lambda.knative.dev/previous-revision";
/// Annotation on the revision template: a hash of everything that makes a revision.
pub const TEMPLATE_HASH: &str = "lambda.knative.dev/template-hash";
/// Annotation on the revision template: the content digest deployed.
pub const DIGEST: &str = "lambda.knative.dev/digest";

/// How the cluster deployer is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnativeSettings {
    /// Where function Services and their Triggers live (the Broker's namespace: a Trigger
    /// refers to a Broker in its own namespace).
    pub namespace: String,
    /// The Broker functions subscribe to.
    pub broker: String,
}

impl Default for KnativeSettings {
    fn default() -> Self {
        Self {
            namespace: "knative-lambda".to_owned(),
            broker: "klambda".to_owned(),
        }
    }
}

impl KnativeSettings {
    /// From `KLAMBDA_FUNCTIONS_NAMESPACE` and `KLAMBDA_BROKER`, with the defaults above.
    pub fn from_config(config: &dyn klambda_harness::ConfigSource) -> Self {
        let d = Self::default();
        Self {
            namespace: config
                .setting("KLAMBDA_FUNCTIONS_NAMESPACE")
                .unwrap_or(d.namespace),
            broker: config.setting("KLAMBDA_BROKER").unwrap_or(d.broker),
        }
    }
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The Service did not exist before.
    pub first: bool,
    /// The template changed: Knative cuts a new revision.
    pub changed: bool,
    /// When nothing changed and the Service is ready: its serving revision and URL.
    pub ready: Option<(String, String)>,
    /// When the template changed: the revision Knative creates for it (`<name>-<generation>`).
    pub revision: Option<String>,
}

/// The revision Knative creates for generation `generation` of Service `name`.
fn revision_name(name: &str, stored: &Value) -> Option<String> {
    let generation = stored["metadata"]["generation"].as_i64()?;
    Some(format!("{name}-{generation:05}"))
}

/// The revision a rollback returned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// Its name.
    pub revision: String,
    /// The image it runs.
    pub image: String,
    /// The content digest it was built from (its template's annotation).
    pub digest: Option<ContentDigest>,
}

/// Function Services and Triggers in one namespace.
#[derive(Clone)]
pub struct KnativeServices {
    client: kube::Client,
    settings: KnativeSettings,
}

fn service_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.knative.dev", "v1", "Service"),
        "services",
    )
}

fn trigger_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("eventing.knative.dev", "v1", "Trigger"),
        "triggers",
    )
}

/// The Secret in the functions' namespace holding the values of functions' secret env, one key
/// per secret name (`kubectl create secret generic klambda-function-secrets --from-literal=…`).
pub const FUNCTION_SECRETS: &str = "klambda-function-secrets";

/// The function Service that serves `spec` at `image` (pure: what [`KnativeServices::apply`]
/// sends, before the previous-revision annotation).
pub fn service(namespace: &str, spec: &FunctionSpec, digest: &ContentDigest, image: &str) -> Value {
    let env: Vec<Value> = spec
        .env
        .iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        // Secret values stay in the cluster's Secret; the kubelet gives them to the container.
        .chain(spec.secrets.iter().map(|(name, secret)| {
            json!({ "name": name, "valueFrom": { "secretKeyRef": {
                "name": FUNCTION_SECRETS, "key": secret } } })
        }))
        .collect();
    let memory = format!("{}Mi", spec.resources.memory_mib);
    let mut template = json!({
        "metadata": {
            "labels": function_labels(&spec.name),
            "annotations": {
                "autoscaling.knative.dev/min-scale": spec.scaling.min_scale.to_string(),
                "autoscaling.knative.dev/max-scale": spec.scaling.max_scale.to_string(),
                // How long the last pod stays after traffic stops (the local runner's idle time).
                "autoscaling.knative.dev/scale-to-zero-pod-retention-period":
                    format!("{}s", spec.scaling.scale_to_zero_after_seconds),
                DIGEST: digest.as_str(),
            },
        },
        "spec": {
            "containerConcurrency": spec.scaling.concurrency,
            "timeoutSeconds": spec.resources.timeout_seconds,
            "containers": [{
                "name": "function",
                "image": image,
                "ports": [{ "name": "http1", "containerPort": 8080 }],
                "env": env,
                "resources": {
                    "requests": { "cpu": format!("{}m", spec.resources.cpu_millis), "memory": memory },
                    "limits": { "memory": memory },
                },
                "readinessProbe": { "httpGet": { "path": "/health" } },
                // A process that stops answering at all (a handler blocking Node's event loop)
                // is restarted, as the local runner does.
                "livenessProbe": {
                    "httpGet": { "path": "/health" },
                    "periodSeconds": 10,
                    "timeoutSeconds": 2,
                    "failureThreshold": 3,
                },
                "securityContext": {
                    "runAsNonRoot": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] },
                    "seccompProfile": { "type": "RuntimeDefault" },
                },
            }],
        },
    });
    let hash = hex::encode(&Sha256::digest(template.to_string().as_bytes())[..8]);
    template["metadata"]["annotations"][TEMPLATE_HASH] = json!(hash);
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": spec.name.as_str(),
            "namespace": namespace,
            "labels": function_labels(&spec.name),
        },
        "spec": {
            "template": template,
            "traffic": [{ "latestRevision": true, "percent": 100 }],
        },
    })
}

fn function_labels(function: &FunctionName) -> Value {
    json!({
        labels::MANAGED_BY: labels::PLATFORM,
        labels::COMPONENT: "function",
        labels::FUNCTION: function.as_str(),
    })
}

/// The RabbitMQ Broker's per-Trigger concurrency (`eventing/triggers/` use it too).
const PARALLELISM_ANNOTATION: &str = "rabbitmq.eventing.knative.dev/parallelism";

/// The function's Triggers: one per filter, and its invocation Trigger (asynchronous
/// invocations addressed to it), each delivering to its Service. What becomes of the reply
/// rides on the subscriber URI's query, which the runtimes' shims honour (a Knative Trigger
/// cannot retype or drop a reply): `?replyType=T` for a filter's `replyType`, `?reply=none` for
/// asynchronous invocations, whose result Lambda drops.
pub fn triggers(settings: &KnativeSettings, spec: &FunctionSpec) -> Vec<Value> {
    let trigger = |name: String,
                   filter: Value,
                   delivery: Option<Value>,
                   query: Option<String>,
                   parallelism: Option<i64>| {
        let mut trigger = json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {
                "name": name,
                "namespace": settings.namespace,
                "labels": function_labels(&spec.name),
            },
            "spec": trigger_spec(settings, spec, filter, delivery, query),
        });
        if let Some(parallelism) = parallelism {
            trigger["metadata"]["annotations"] =
                json!({ PARALLELISM_ANNOTATION: parallelism.to_string() });
        }
        trigger
    };
    let delivery = spec
        .delivery
        .as_ref()
        .map(|d| serde_json::to_value(d).unwrap_or_default());
    let mut triggers: Vec<Value> = spec
        .triggers
        .iter()
        .enumerate()
        .map(|(index, filter)| {
            let reply_type = filter.reply_type.as_deref().map(|ty| {
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("replyType", ty)
                    .finish()
            });
            trigger(
                klambda_events::spec::trigger_name(&spec.name, index),
                json!(filter.attributes),
                delivery.clone(),
                reply_type,
                filter.parallelism,
            )
        })
        .collect();
    // Lambda retries an asynchronous invocation twice unless told otherwise.
    let invocations =
        delivery.unwrap_or_else(|| json!({ "retry": klambda_events::spec::INVOCATION_RETRIES }));
    triggers.push(trigger(
        klambda_events::spec::invocation_trigger_name(&spec.name),
        json!({
            "type": klambda_events::external::INVOKE,
            klambda_events::external::INVOKE_FUNCTION_EXTENSION: spec.name.as_str(),
        }),
        Some(invocations),
        Some("reply=none".to_owned()),
        Some(i64::from(klambda_events::spec::INVOCATION_PARALLELISM)),
    ));
    triggers
}

fn trigger_spec(
    settings: &KnativeSettings,
    spec: &FunctionSpec,
    attributes: Value,
    delivery: Option<Value>,
    query: Option<String>,
) -> Value {
    let mut trigger = json!({
        "broker": settings.broker,
        "filter": { "attributes": attributes },
        "subscriber": { "ref": {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "name": spec.name.as_str(),
            "namespace": settings.namespace,
        }},
    });
    if let Some(query) = query {
        // Resolved against the Service's address: http://<function>.<namespace>.svc…/?query
        trigger["subscriber"]["uri"] = json!(format!("/?{query}"));
    }
    if let Some(mut block) = delivery {
        // A Trigger's delivery replaces the Broker's entirely, its dead-letter sink included:
        // so the platform's dead letters are named again (as in eventing/broker.yaml).
        block["deadLetterSink"] = platform_dead_letters(settings);
        trigger["delivery"] = block;
    }
    trigger
}

/// The platform's dead letters: the status reporter's `/dead-letters`, the Broker's own
/// `deadLetterSink`.
fn platform_dead_letters(settings: &KnativeSettings) -> Value {
    json!({
        "ref": {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "name": "status-reporter",
            "namespace": settings.namespace,
        },
        "uri": "/dead-letters",
    })
}

/// What a function Service's status says about its latest apply: `None` while Knative has not
/// decided (Ready `Unknown`, or the status describes an older generation).
pub fn readiness(service: &Value) -> Option<Result<(String, String), NotReady>> {
    let status = &service["status"];
    if status["observedGeneration"] != service["metadata"]["generation"] {
        return None;
    }
    let ready = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match ready["status"].as_str()? {
        "True" => {
            // The serving revision: the pinned one after a rollback, else the latest ready.
            let serving = status["traffic"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["percent"].as_i64() == Some(100)))
                .map(|t| text(&t["revisionName"]))
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| text(&status["latestReadyRevisionName"]));
            Some(Ok((serving, text(&status["url"]))))
        }
        "False" => Some(Err(NotReady {
            revision: Some(text(&status["latestCreatedRevisionName"])).filter(|r| !r.is_empty()),
            reason: text(&ready["reason"]),
            message: text(&ready["message"]),
        })),
        _ => None,
    }
}

impl KnativeServices {
    /// Function Services through `client`.
    pub fn new(client: kube::Client, settings: KnativeSettings) -> Self {
        Self { client, settings }
    }

    /// The settings.
    pub fn settings(&self) -> &KnativeSettings {
        &self.settings
    }

    fn services(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.settings.namespace,
            &service_resource(),
        )
    }

    fn triggers(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.settings.namespace,
            &trigger_resource(),
        )
    }

    async fn current(&self, name: &str) -> Result<Option<Value>, KubeError> {
        match self.services().get(name).await {
            Ok(object) => Ok(Some(serde_json::to_value(object).unwrap_or_default())),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(None),
            Err(error) => Err(KubeError::of(format!("reading Service {name}"))(error)),
        }
    }

    /// Applies `object`; returns the object as stored.
    async fn apply_object(
        &self,
        api: &Api<DynamicObject>,
        object: &Value,
    ) -> Result<Value, KubeError> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map(|stored| serde_json::to_value(stored).unwrap_or_default())
        .map_err(KubeError::of(format!("applying {kind} {name}")))
    }

    /// Serves `spec` at `image`: the Service (a new revision when anything in its template
    /// changed) and the Triggers of its filters, stale ones deleted.
    #[tracing::instrument(name = "deployer", skip_all, fields(otel.name = "deployer.apply", backend = "knative"))]
    pub async fn apply(
        &self,
        spec: &FunctionSpec,
        digest: &ContentDigest,
        image: &str,
    ) -> Result<Applied, KubeError> {
        let name = spec.name.as_str();
        let mut desired = service(&self.settings.namespace, spec, digest, image);
        let current = self.current(name).await?;
        let hash_of =
            |s: &Value| s["spec"]["template"]["metadata"]["annotations"][TEMPLATE_HASH].clone();
        let unchanged = current.as_ref().is_some_and(|c| {
            hash_of(c) == hash_of(&desired) && c["spec"]["traffic"] == desired["spec"]["traffic"]
        });
        if let Some(current) = current.as_ref().filter(|_| unchanged) {
            let ready = readiness(current).and_then(Result::ok);
            self.apply_triggers(spec).await?;
            return Ok(Applied {
                first: false,
                changed: false,
                ready,
                revision: None,
            });
        }
        let previous = current
            .as_ref()
            .and_then(readiness)
            .and_then(Result::ok)
            .map(|(revision, _)| revision)
            .or_else(|| {
                current.as_ref().and_then(|c| {
                    c["metadata"]["annotations"][PREVIOUS_REVISION]
                        .as_str()
                        .map(str::to_owned)
                })
            });
        if let Some(previous) = &previous {
            desired["metadata"]["annotations"] = json!({ PREVIOUS_REVISION: previous });
        }
        let stored = self.apply_object(&self.services(), &desired).await?;
        self.apply_triggers(spec).await?;
        Ok(Applied {
            first: current.is_none(),
            changed: true,
            ready: None,
            revision: revision_name(name, &stored),
        })
    }

    async fn apply_triggers(&self, spec: &FunctionSpec) -> Result<(), KubeError> {
        let desired = triggers(&self.settings, spec);
        for trigger in &desired {
            self.apply_object(&self.triggers(), trigger).await?;
        }
        let wanted: Vec<&str> = desired
            .iter()
            .filter_map(|t| t["metadata"]["name"].as_str())
            .collect();
        for stale in self.trigger_names(&spec.name).await? {
            if !wanted.contains(&stale.as_str()) {
                self.delete_trigger(&stale).await?;
            }
        }
        Ok(())
    }

    async fn trigger_names(&self, function: &FunctionName) -> Result<Vec<String>, KubeError> {
        let selector = format!("{}={}", labels::FUNCTION, function.as_str());
        let list = self
            .triggers()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(KubeError::of(format!("listing the Triggers of {function}")))?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|t| t.metadata.name)
            .collect())
    }

    async fn delete_trigger(&self, name: &str) -> Result<bool, KubeError> {
        match self
            .triggers()
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
            Err(error) => Err(KubeError::of(format!("deleting Trigger {name}"))(error)),
        }
    }

    /// Pins traffic to `to`, or to the revision that served before the latest apply; returns the
    /// revision with its image and digest, or `None` when the function has no Service, nothing
    /// to return to, or the revision is gone.
    #[tracing::instrument(name = "deployer", skip_all, fields(otel.name = "deployer.rollback", backend = "knative"))]
    pub async fn rollback(
        &self,
        function: &FunctionName,
        to: Option<&str>,
    ) -> Result<Option<RolledBack>, KubeError> {
        let Some(current) = self.current(function.as_str()).await? else {
            return Ok(None);
        };
        let target = to.map(str::to_owned).or_else(|| {
            current["metadata"]["annotations"][PREVIOUS_REVISION]
                .as_str()
                .map(str::to_owned)
        });
        let Some(target) = target else {
            return Ok(None);
        };
        let revisions: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.settings.namespace,
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("serving.knative.dev", "v1", "Revision"),
                "revisions",
            ),
        );
        let revision = match revisions.get(&target).await {
            Ok(revision) => serde_json::to_value(revision).unwrap_or_default(),
            Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(None),
            Err(error) => return Err(KubeError::of(format!("reading Revision {target}"))(error)),
        };
        let rolled_back = RolledBack {
            revision: target.clone(),
            image: revision["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            digest: serde_json::from_value(revision["metadata"]["annotations"][DIGEST].clone())
                .ok(),
        };
        // The whole desired object again, as applied before, with traffic pinned: apply owns
        // the fields it sends, so leaving the template out would remove it.
        let mut template = current["spec"]["template"].clone();
        if let Some(annotations) = template["metadata"]["annotations"].as_object_mut() {
            annotations.retain(|k, _| !k.starts_with("serving.knative.dev/"));
        }
        let desired = json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {
                "name": function.as_str(),
                "namespace": self.settings.namespace,
                "labels": function_labels(function),
                "annotations": current["metadata"]["annotations"].clone(),
            },
            "spec": {
                "template": template,
                "traffic": [{ "revisionName": target, "percent": 100 }],
            },
        });
        self.apply_object(&self.services(), &desired).await?;
        Ok(Some(rolled_back))
    }

    /// Deletes the function's Service (its revisions go with it) and Triggers; false when there
    /// was no Service.
    #[tracing::instrument(name = "deployer", skip_all, fields(otel.name = "deployer.delete", backend = "knative"))]
    pub async fn delete(&self, function: &FunctionName) -> Result<bool, KubeError> {
        for trigger in self.trigger_names(function).await? {
            self.delete_trigger(&trigger).await?;
        }
        let name = function.as_str();
        match self
            .services()
            .delete(name, &DeleteParams::foreground())
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
            Err(error) => Err(KubeError::of(format!("deleting Service {name}"))(error)),
        }
    }
}

impl Deployer for KnativeServices {
    fn backend(&self) -> &'static str {
        "knative"
    }

    fn deploy<'a>(
        &'a self,
        spec: &'a FunctionSpec,
        digest: &'a ContentDigest,
        image: &'a str,
    ) -> BoxFuture<'a, Result<Deployment, DeployError>> {
        Box::pin(async move {
            let applied = self.apply(spec, digest, image).await?;
            let revision = |name: String, url: String| Revision {
                name,
                url,
                image: image.to_owned(),
                digest: digest.clone(),
                first: applied.first,
                changed: applied.changed,
                // The image pins the runtime's version.
                runtime: None,
            };
            Ok(match (applied.ready.clone(), applied.revision.clone()) {
                // A replay of what already serves: the same answer as the first time.
                (Some((name, url)), _) => Deployment::Settled(Ok(revision(name, url))),
                (None, created) => Deployment::Applied {
                    created: created.map(|name| revision(name, String::new())),
                },
            })
        })
    }

    fn rollback<'a>(
        &'a self,
        name: &'a FunctionName,
        to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Deployment, DeployError>> {
        Box::pin(async move {
            let Some(rolled) = KnativeServices::rollback(self, name, to).await? else {
                return Ok(Deployment::Settled(Err(NotReady {
                    revision: to.map(str::to_owned),
                    reason: "RevisionMissing".to_owned(),
                    message: "no earlier revision to roll back to".to_owned(),
                })));
            };
            Ok(Deployment::Applied {
                created: rolled.digest.map(|digest| Revision {
                    name: rolled.revision,
                    url: String::new(),
                    image: rolled.image,
                    digest,
                    first: false,
                    changed: true,
                    runtime: None,
                }),
            })
        })
    }

    fn delete<'a>(&'a self, name: &'a FunctionName) -> BoxFuture<'a, Result<bool, DeployError>> {
        Box::pin(async move { Ok(KnativeServices::delete(self, name).await?) })
    }

    fn status_events(&self) -> &'static [&'static str] {
        &klambda_kube::APISERVER_EVENT_TYPES
    }

    /// A function Service's status: a verdict once Knative decided about its latest generation,
    /// keyed by the Service's uid, generation and verdict, so the repeated updates Knative makes
    /// give one answer.
    fn observe(&self, event: &Event) -> Option<Observation> {
        let service = klambda_kube::object_of::<Value>(event).ok()?;
        let labels = &service["metadata"]["labels"];
        let function = labels[labels::FUNCTION]
            .as_str()
            .and_then(|name| FunctionName::new(name).ok())?;
        if labels[labels::MANAGED_BY] != labels::PLATFORM {
            return None;
        }
        let verdict = readiness(&service)?;
        let key = format!(
            "{}/{}/{}",
            service["metadata"]["uid"].as_str().unwrap_or_default(),
            service["metadata"]["generation"],
            match &verdict {
                Ok((revision, _)) => format!("ready/{revision}"),
                Err(not_ready) => format!("failed/{}", not_ready.reason),
            }
        );
        Some(Observation {
            function,
            key,
            verdict,
        })
    }
}
