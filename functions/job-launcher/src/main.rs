//! The job-launcher stage binary: serves [`job_launcher::JobLauncher`] with the local builder.

fn main() -> std::process::ExitCode {
    klambda_harness::run("job-launcher", job_launcher::JobLauncher::from_config)
}
