//! Build contexts are deterministic and hold exactly the Dockerfile, the shim and the function.

use std::io::Read as _;

use klambda_events::Runtime;
use klambda_runtimes::Template;
use klambda_runtimes::context::{SourceFile, build};

fn file(path: &str, text: &str) -> SourceFile {
    SourceFile::in_memory(path, text.as_bytes())
}

fn entries(archive: &[u8]) -> Vec<(String, u64, u32, String)> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut out = Vec::new();
    for entry in tar.entries().unwrap_or_else(|e| panic!("{e}")) {
        let mut entry = entry.unwrap_or_else(|e| panic!("{e}"));
        let header = entry.header().clone();
        let mut text = String::new();
        let _ = entry.read_to_string(&mut text);
        let path = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        out.push((
            path,
            header.mtime().unwrap_or(1),
            header.mode().unwrap_or(0),
            text,
        ));
    }
    out
}

#[test]
fn the_same_source_gives_byte_identical_contexts() {
    let template = Template::of(Runtime::find("nodejs22").unwrap_or_else(|| panic!("runtime")))
        .unwrap_or_else(|e| panic!("{e}"));
    let files = [
        file("index.js", "exports.handler = async () => 1;"),
        file("lib/a.js", "module.exports = 2;"),
    ];
    let reversed = [files[1].clone(), files[0].clone()];
    let first = build(&template, "index.handler", &files).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        first,
        build(&template, "index.handler", &files).unwrap_or_else(|e| panic!("{e}"))
    );
    assert_eq!(
        first,
        build(&template, "index.handler", &reversed).unwrap_or_else(|e| panic!("{e}")),
        "input order must not matter"
    );
    let changed = build(
        &template,
        "index.handler",
        &[file("index.js", "exports.handler = async () => 2;")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(first, changed);
}

#[test]
fn the_context_holds_dockerfile_shim_and_function() {
    let template = Template::of(Runtime::find("python3.12").unwrap_or_else(|| panic!("runtime")))
        .unwrap_or_else(|e| panic!("{e}"));
    let archive = build(
        &template,
        "app.handler",
        &[
            file("app.py", "def handler(e, c): return e"),
            file("requirements.txt", "requests==2.32.3"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let entries = entries(&archive);
    let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        paths,
        [
            "Dockerfile",
            "function/app.py",
            "function/requirements.txt",
            "runtime/shim.py"
        ]
    );
    assert!(
        entries.iter().all(|e| e.1 == 0 && e.2 == 0o644),
        "fixed mtime and mode: {entries:?}"
    );
    let dockerfile = &entries[0].3;
    assert!(
        dockerfile.contains("FROM public.ecr.aws/docker/library/python:3.12-slim"),
        "{dockerfile}"
    );
    assert!(
        dockerfile.contains("RUN [\"python3\",\"-m\",\"pip\""),
        "dependencies are installed: {dockerfile}"
    );
    assert!(
        dockerfile.contains("CMD [\"python3\",\"/var/runtime/shim.py\"]"),
        "{dockerfile}"
    );
    assert!(
        !dockerfile.contains("app.handler"),
        "the handler is deployment config, not image content"
    );
}
