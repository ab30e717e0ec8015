//! The build context: `Dockerfile`, `runtime/<shim>`, `function/<source files>`, as a tar.gz
//! that is byte-identical for the same input (sorted entries, fixed mtime, owner and modes, a
//! gzip header without time or name), so its sha256 can name it and a rebuild can be skipped.

use std::io::Write as _;

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::Template;

/// One file of a function's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Relative path (already validated and normalised by the parser).
    pub path: String,
    /// Contents.
    pub bytes: Vec<u8>,
}

/// Builds the context for `files` with `template`; returns the tar.gz bytes.
pub fn build(template: &Template, files: &[SourceFile]) -> std::io::Result<Vec<u8>> {
    let dependency_file = &template.descriptor().dependency_file;
    let has_dependencies = files.iter().any(|f| &f.path == dependency_file);
    let (shim_name, shim) = template.shim();
    let dockerfile = template.dockerfile(has_dependencies);
    let mut entries: Vec<(String, &[u8])> = vec![
        ("Dockerfile".to_owned(), dockerfile.as_bytes()),
        (format!("runtime/{shim_name}"), shim.as_bytes()),
    ];
    for file in files {
        entries.push((format!("function/{}", file.path), &file.bytes));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));

    let gzip = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    let mut archive = tar::Builder::new(gzip);
    archive.mode(tar::HeaderMode::Deterministic);
    for (path, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        archive.append_data(&mut header, &path, bytes)?;
    }
    let mut gzip: GzEncoder<Vec<u8>> = archive.into_inner()?;
    gzip.flush()?;
    gzip.finish()
}
