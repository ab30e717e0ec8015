//! The context-uploader stage binary: serves [`context_uploader::ContextUploader`] through the
//! harness, storing contexts under `KLAMBDA_STORE_DIR`.

fn main() -> std::process::ExitCode {
    klambda_harness::run(
        "context-uploader",
        &[
            klambda_harness::config::STORE_SETTINGS,
            context_uploader::SETTINGS,
        ],
        async |config| context_uploader::ContextUploader::from_config(config),
    )
}
