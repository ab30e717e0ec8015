//! The real AWS CLI (version 1, from PyPI), as Lambda users run it, against the platform's
//! Lambda API: installed by scripts/services.sh into [`TOOLS`] with boto3.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Result, ensure};

/// Where scripts/services.sh installs the AWS CLI and boto3 (`bin/aws`, `bin/python`).
pub const TOOLS: &str = "/var/tmp/knative-lambda/tools/aws/bin";

/// `aws lambda ARGS --endpoint-url ENDPOINT --output json`, signed as the platform asks: access
/// key id `klambda`, `secret` (the API token) as the secret access key, any region; no config
/// or credentials file of this machine's, one attempt.
pub fn lambda(endpoint: &str, secret: &str, args: &[&str]) -> Result<Output> {
    let program = Path::new(TOOLS).join("aws");
    ensure!(
        program.exists(),
        "the AWS CLI is not installed at {}: run scripts/services.sh",
        program.display()
    );
    Ok(Command::new(program)
        .arg("lambda")
        .args(args)
        .args(["--endpoint-url", endpoint, "--output", "json"])
        .env("AWS_ACCESS_KEY_ID", "klambda")
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_DEFAULT_REGION", "eu-west-3")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()?)
}
