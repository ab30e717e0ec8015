//! The service-deployer stage: runs built functions.
//!
//! - **Consumes** `io.knative.lambda.build.completed`, `function.deleted`, `function.rollback`.
//! - **Emits** `service.created` (first revision) or `service.updated` (a new or rolled-back
//!   revision) as a side event, then **replies** `service.ready` (the revision and its URL) or
//!   `service.failed` (reason and message, as a Knative Ready condition would give them);
//!   `service.deleted` for deletions, whether or not the function existed.
//! - A replayed `build.completed` for the revision already serving changes nothing and gets the
//!   same `service.ready`.
//!
//! # Layout
//! - [`deployer`]: the `Deployer` trait and the local process runner.

pub mod deployer;

use std::sync::Arc;
use std::time::Instant;

use cloudevents::{AttributesReader as _, Event};
use klambda_events::catalogue::{
    BuildCompleted, FunctionDeleted, FunctionRollback, ServiceCreated, ServiceDeleted,
    ServiceFailed, ServiceReady, ServiceUpdated,
};
use klambda_events::data::{ServiceFailure, ServiceReadiness, ServiceRemoval, ServiceRevision};
use klambda_events::{Envelope, EventType, FunctionName, Stage, decode};
use klambda_harness::{ConfigError, ConfigSource, Context, Handler, HandlerError, Outcome};

use crate::deployer::local::LocalRunner;
use crate::deployer::{Deployer, NotReady, Revision};

/// The service-deployer's handler.
#[derive(Clone)]
pub struct ServiceDeployer {
    deployer: Arc<dyn Deployer>,
}

impl ServiceDeployer {
    /// A deployer over `deployer`.
    pub fn new(deployer: Arc<dyn Deployer>) -> Self {
        Self { deployer }
    }

    /// A deployer running functions as local processes.
    pub fn from_config(_: &dyn ConfigSource) -> Result<Self, ConfigError> {
        Ok(Self::new(Arc::new(LocalRunner::new())))
    }

    async fn settle(
        &self,
        input: &Event,
        context: &Context,
        function: &FunctionName,
        result: Result<Revision, NotReady>,
    ) -> Event {
        let envelope = |ty: &str| {
            Envelope::answering(input, Stage::ServiceDeployer, ty).subject(function.to_string())
        };
        match result {
            Ok(revision) => {
                if revision.changed {
                    let data = ServiceRevision {
                        function: function.clone(),
                        revision: revision.name.clone(),
                        image: revision.image.clone(),
                        digest: revision.digest.clone(),
                    };
                    let event = if revision.first {
                        envelope(ServiceCreated::TYPE).encode::<ServiceCreated>(&data)
                    } else {
                        envelope(ServiceUpdated::TYPE).encode::<ServiceUpdated>(&data)
                    };
                    context.publish(event).await;
                }
                envelope(ServiceReady::TYPE).encode::<ServiceReady>(&ServiceReadiness {
                    function: function.clone(),
                    revision: revision.name,
                    url: revision.url,
                })
            }
            Err(not_ready) => {
                envelope(ServiceFailed::TYPE).encode::<ServiceFailed>(&ServiceFailure {
                    function: function.clone(),
                    revision: not_ready.revision,
                    reason: not_ready.reason,
                    message: not_ready.message,
                })
            }
        }
    }
}

impl Handler for ServiceDeployer {
    fn stage(&self) -> Stage {
        Stage::ServiceDeployer
    }

    async fn handle(&self, event: Event, context: &Context) -> Result<Outcome, HandlerError> {
        let ty = event.ty().to_owned();
        let started = Instant::now();
        let timed = |operation, ok: bool| {
            let outcome = if ok { "ready" } else { "failed" };
            context
                .metrics()
                .deployed(operation, outcome, started.elapsed().as_secs_f64());
        };
        let reply = if ty == BuildCompleted::TYPE {
            let built = decode::<BuildCompleted>(&event)?;
            let result = self
                .deployer
                .deploy(&built.spec, &built.digest, &built.image)
                .await;
            timed("apply", result.is_ok());
            self.settle(&event, context, &built.spec.name, result).await
        } else if ty == FunctionRollback::TYPE {
            let request = decode::<FunctionRollback>(&event)?;
            let result = self
                .deployer
                .rollback(&request.name, request.to_revision.as_deref())
                .await;
            timed("rollback", result.is_ok());
            self.settle(&event, context, &request.name, result).await
        } else {
            let deletion = decode::<FunctionDeleted>(&event)?;
            let existed = self.deployer.delete(&deletion.name).await;
            timed("delete", true);
            tracing::info!(function = %deletion.name, existed, "deleted");
            Envelope::answering(&event, Stage::ServiceDeployer, ServiceDeleted::TYPE)
                .subject(deletion.name.to_string())
                .encode::<ServiceDeleted>(&ServiceRemoval {
                    function: deletion.name,
                })
        };
        Ok(Outcome::Reply(reply))
    }
}
