//! The service-deployer stage binary: serves [`service_deployer::ServiceDeployer`] with the
//! local process runner.

fn main() -> std::process::ExitCode {
    klambda_harness::run(
        "service-deployer",
        &[service_deployer::SETTINGS],
        service_deployer::ServiceDeployer::from_config,
    )
}
