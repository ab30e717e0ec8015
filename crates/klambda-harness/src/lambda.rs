//! AWS Lambda: the same router behind `lambda_http`, so a stage runs unchanged behind an API
//! Gateway, an ALB or a function URL. The Lambda runtime API delivers one request at a time;
//! the router answers it exactly as it answers Knative.

use crate::handler::Handler;
use crate::harness::Harness;

/// Serves `harness` through the Lambda runtime API until the runtime stops it.
pub async fn run<H: Handler>(harness: Harness<H>) -> Result<(), lambda_http::Error> {
    lambda_http::run(harness.router()).await
}
