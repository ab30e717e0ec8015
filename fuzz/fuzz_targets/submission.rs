//! The parser's validation of a submission (`function.created` data): a spec or every problem,
//! never a panic; a spec it accepts is accepted again unchanged (normalising is idempotent).
#![no_main]

use klambda_events::spec::{FunctionSubmission, Source};
use libfuzzer_sys::fuzz_target;
use parser::limits::Limits;
use parser::validate;

fuzz_target!(|data: &[u8]| {
    let Ok(submission) = serde_json::from_slice::<FunctionSubmission>(data) else {
        return;
    };
    if let Ok((spec, digest)) = validate::parse(submission, &Limits::default()) {
        // The spec as a submission again: the same digest.
        let source = match &spec.source {
            Source::S3 { bucket, key } => {
                serde_json::json!({"kind": "s3", "url": format!("s3://{bucket}/{key}")})
            }
            other => serde_json::to_value(other).expect("a source serialises"),
        };
        let again: FunctionSubmission = serde_json::from_value(serde_json::json!({
            "name": spec.name.as_str(),
            "runtime": spec.runtime.id(),
            "handler": spec.handler,
            "source": source,
            "env": spec.env,
            "secrets": spec.secrets,
            "triggers": spec.triggers,
        }))
        .expect("a spec reads as a submission");
        let (_, again_digest) =
            validate::parse(again, &Limits::default()).expect("a normalised spec is accepted");
        assert_eq!(again_digest, digest, "normalising is idempotent");
    }
});
