//! Events and specs built from the contract (`klambda-events`) alone, so a stage's tests do not
//! borrow another stage (the parser) to make their inputs.

use std::collections::BTreeMap;

use klambda_events::catalogue::ContextUploaded;
use klambda_events::cloudevents::Event;
use klambda_events::data::{BuildContext, ObjectRef};
use klambda_events::spec::{
    BuildSettings, ContentEncoding, InlineFile, Resources, Scaling, Source,
};
use klambda_events::{ContentDigest, Envelope, FunctionName, FunctionSpec, Runtime, Stage};

/// A normalised spec of an inline function named `name` on `runtime` with `files` (path,
/// UTF-8 content), every setting at its default, and its content digest: what the parser makes
/// of the same submission.
pub fn inline_function(
    name: &str,
    runtime: Runtime,
    handler: &str,
    files: &[(&str, &str)],
) -> anyhow::Result<(FunctionSpec, ContentDigest)> {
    let mut files: Vec<InlineFile> = files
        .iter()
        .map(|(path, content)| InlineFile {
            path: (*path).to_owned(),
            content: (*content).to_owned(),
            encoding: ContentEncoding::Utf8,
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let source = Source::Inline { files };
    let digest = klambda_events::digest::content_digest(runtime, &source);
    let spec = FunctionSpec {
        name: FunctionName::new(name)?,
        runtime,
        handler: handler.to_owned(),
        source,
        env: BTreeMap::new(),
        resources: Resources::default(),
        scaling: Scaling::default(),
        build: BuildSettings::default(),
        triggers: Vec::new(),
        extra: BTreeMap::new(),
    };
    Ok((spec, digest))
}

/// A Node.js function `name` whose handler returns 1.
pub fn node_function(name: &str) -> anyhow::Result<(FunctionSpec, ContentDigest)> {
    let runtime = Runtime::find("nodejs20")
        .ok_or_else(|| anyhow::anyhow!("the catalogue has no nodejs20 runtime"))?;
    inline_function(
        name,
        runtime,
        "index.handler",
        &[("index.js", "exports.handler = async () => 1;")],
    )
}

/// The `context.uploaded` the context-uploader sends for `spec` with its context at `uri`.
pub fn context_uploaded(spec: FunctionSpec, digest: ContentDigest, uri: &str) -> Event {
    Envelope::new(
        format!("u-{}", digest.hex()),
        Stage::ContextUploader.event_source(),
    )
    .subject(spec.name.to_string())
    .encode::<ContextUploaded>(&BuildContext {
        context: ObjectRef {
            uri: uri.to_owned(),
            size: 0,
        },
        spec,
        digest,
        commit: None,
    })
}
