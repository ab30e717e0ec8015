//! The job-launcher stage binary: serves [`job_launcher::JobLauncher`] with the builder
//! `KLAMBDA_BUILDER` names (local, or Kaniko Jobs on Kubernetes).

fn main() -> std::process::ExitCode {
    klambda_harness::run(
        "job-launcher",
        &[
            klambda_harness::config::STORE_SETTINGS,
            job_launcher::SETTINGS,
        ],
        job_launcher::JobLauncher::from_config,
    )
}
