//! The status reporter stage binary: serves [`status_reporter::StatusReporter`] through the
//! harness, with the store `DATABASE_URL` names.

fn main() -> std::process::ExitCode {
    klambda_harness::run(
        "status-reporter",
        &[status_reporter::SETTINGS],
        async |config| status_reporter::StatusReporter::from_config(config),
    )
}
