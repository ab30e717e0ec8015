//! Events and specs built from the contract (`klambda-events`) alone, so a stage's tests do not
//! borrow another stage (the parser) to make their inputs.

use std::collections::BTreeMap;
use std::path::Path;

use klambda_events::catalogue::{BuildCompleted, ContextUploaded, ParserCompleted};
use klambda_events::cloudevents::Event;
use klambda_events::data::{BuildContext, BuiltImage, ObjectRef, Operation, ParsedFunction};
use klambda_events::spec::{
    BuildSettings, ContentEncoding, InlineFile, Resources, Scaling, Source,
};
use klambda_events::{
    BuildId, ContentDigest, Envelope, FunctionName, FunctionSpec, Runtime, Stage,
};
use klambda_runtimes::Template;
use klambda_runtimes::archive::Limits;
use klambda_runtimes::context::SourceFile;

/// An event key for stage binaries started by tests (`KLAMBDA_EVENT_KEYS`).
pub const EVENT_KEY: &str = "a-test-platform-event-key-of-32-bytes";

/// A normalised spec of the function `name` on `runtime` with `source` (already in the parser's
/// canonical form), every setting at its default, and its content digest.
pub fn function(
    name: &str,
    runtime: Runtime,
    handler: &str,
    source: Source,
) -> anyhow::Result<(FunctionSpec, ContentDigest)> {
    let digest = klambda_events::digest::content_digest(runtime, handler, &source);
    let spec = FunctionSpec {
        name: FunctionName::new(name)?,
        runtime,
        handler: handler.to_owned(),
        source,
        env: BTreeMap::new(),
        secrets: BTreeMap::new(),
        resources: Resources::default(),
        scaling: Scaling::default(),
        build: BuildSettings::default(),
        triggers: Vec::new(),
        delivery: None,
        extra: BTreeMap::new(),
    };
    Ok((spec, digest))
}

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
    function(name, runtime, handler, Source::Inline { files })
}

/// The `parser.completed` (operation create) the parser sends for `spec`, with event id `id`.
pub fn parser_completed(id: &str, spec: FunctionSpec, digest: ContentDigest) -> Event {
    Envelope::new(id, Stage::Parser.event_source())
        .subject(spec.name.to_string())
        .encode::<ParserCompleted>(&ParsedFunction {
            operation: Operation::Create,
            spec,
            digest,
        })
}

/// The catalogue's runtime `id` (`nodejs20`, `python3.12`, …).
pub fn runtime(id: &str) -> anyhow::Result<Runtime> {
    Runtime::find(id).ok_or_else(|| anyhow::anyhow!("the catalogue has no runtime {id}"))
}

/// A Node.js function `name` whose handler returns 1.
pub fn node_function(name: &str) -> anyhow::Result<(FunctionSpec, ContentDigest)> {
    inline_function(
        name,
        runtime("nodejs20")?,
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

/// The `build.completed` the job-launcher sends for `spec` built as `image`.
pub fn build_completed(spec: FunctionSpec, digest: ContentDigest, image: &str) -> Event {
    let build_id = BuildId::derive(&spec.name, &digest);
    Envelope::new(
        format!("b-{}", digest.hex()),
        Stage::JobLauncher.event_source(),
    )
    .subject(spec.name.to_string())
    .encode::<BuildCompleted>(&BuiltImage {
        spec,
        digest,
        build_id,
        image: image.to_owned(),
        cached: false,
    })
}

/// The build context the context-uploader makes of an inline `spec`: the runtime's template
/// around the function's files, as tar.gz bytes (stored under `contexts/<digest>.tar.gz`).
pub fn context_archive(spec: &FunctionSpec) -> anyhow::Result<Vec<u8>> {
    let Source::Inline { files } = &spec.source else {
        anyhow::bail!("fixtures make contexts of inline functions only");
    };
    let files: Vec<SourceFile> = files
        .iter()
        .map(|file| SourceFile::in_memory(file.path.clone(), file.content.as_bytes()))
        .collect();
    let template = Template::of(spec.runtime)?;
    Ok(klambda_runtimes::context::build(
        &template,
        &spec.handler,
        &files,
    )?)
}

/// What the local builder makes of a dependency-free inline `spec`: its build context unpacked
/// in `dir`, as the `local:` image the local runner starts.
pub fn local_artifact(spec: &FunctionSpec, dir: &Path) -> anyhow::Result<String> {
    let archive = context_archive(spec)?;
    let _ = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let packed = dir.with_extension("tar.gz");
    std::fs::write(&packed, archive)?;
    klambda_runtimes::archive::extract(&packed, dir, &Limits::default())?;
    std::fs::remove_file(&packed)?;
    Ok(format!("local:{}", dir.display()))
}
