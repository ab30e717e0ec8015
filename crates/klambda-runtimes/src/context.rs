//! The build context: `Dockerfile`, `runtime/<shim and build files>`, `function/<source files>`, as a tar.gz
//! that is byte-identical for the same input (sorted entries, fixed mtime, owner and modes, a
//! gzip header without time or name), so its sha256 can name it and a rebuild can be skipped.
//!
//! [`write`] streams: files on disk are read as the archive is written, so a context of any size
//! goes to storage through a bounded buffer. Compression is gzip level 1: contexts are read once
//! by the builder, and CPU is what the uploader is short of.

use std::io::Write;
use std::path::PathBuf;

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::Template;

/// One file of a function's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Relative path (already validated and normalised).
    pub path: String,
    /// Where its bytes are.
    pub content: Content,
}

/// A source file's bytes: in memory (inline sources) or in a file (unpacked archives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The bytes.
    Bytes(Vec<u8>),
    /// A file read while the archive is written.
    File(PathBuf),
}

impl SourceFile {
    /// A file held in memory.
    pub fn in_memory(path: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            path: path.into(),
            content: Content::Bytes(bytes.into()),
        }
    }
}

/// Builds the context for `files` with `template` and `handler` in memory; returns the tar.gz
/// bytes.
pub fn build(template: &Template, handler: &str, files: &[SourceFile]) -> std::io::Result<Vec<u8>> {
    let runtime = runtime_files(template, handler, files)?;
    let mut bytes = Vec::new();
    write(template, &runtime, files, &mut bytes)?;
    Ok(bytes)
}

/// The files of the context's `runtime/` directory for a function with `handler` and `files`
/// ([`Template::runtime_files`]; its dependency file, a Go function's `go.mod` or a Rust one's
/// `Cargo.toml`, is read for the names the program imports). A
/// source that does not fit the template is `InvalidInput`, with the reason.
pub fn runtime_files(
    template: &Template,
    handler: &str,
    files: &[SourceFile],
) -> std::io::Result<Vec<(String, String)>> {
    let dependency_file = &template.descriptor().dependency_file;
    let manifest = match files
        .iter()
        .find(|f| &f.path == dependency_file)
        .map(|f| &f.content)
    {
        Some(Content::Bytes(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Some(Content::File(path)) => Some(std::fs::read_to_string(path)?),
        None => None,
    };
    template
        .runtime_files(handler, manifest.as_deref())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
}

/// Writes the context for `files` with `template` and its `runtime` files
/// ([`runtime_files`]) to `out` as it is produced.
pub fn write(
    template: &Template,
    runtime: &[(String, String)],
    files: &[SourceFile],
    out: impl Write,
) -> std::io::Result<()> {
    let dependency_file = &template.descriptor().dependency_file;
    let has_dependencies = files.iter().any(|f| &f.path == dependency_file);
    let dockerfile = template.dockerfile(has_dependencies);
    let dockerfile = Content::Bytes(dockerfile.into_bytes());
    let runtime: Vec<(String, Content)> = runtime
        .iter()
        .map(|(path, text)| {
            (
                format!("runtime/{path}"),
                Content::Bytes(text.as_bytes().to_vec()),
            )
        })
        .collect();
    let mut entries: Vec<(String, &Content)> = vec![("Dockerfile".to_owned(), &dockerfile)];
    entries.extend(
        runtime
            .iter()
            .map(|(path, content)| (path.clone(), content)),
    );
    for file in files {
        entries.push((format!("function/{}", file.path), &file.content));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    write_archive(&entries, out)
}

/// Writes `entries` (archive path and content, in the order given) as a deterministic tar.gz:
/// fixed mtime, owner and mode, gzip level 1 without time or name. The same entries always give
/// the same bytes, so the archive's sha256 can name it.
pub fn write_archive(entries: &[(String, &Content)], out: impl Write) -> std::io::Result<()> {
    let gzip = flate2::GzBuilder::new()
        .mtime(0)
        .write(out, Compression::fast());
    let mut archive = tar::Builder::new(gzip);
    archive.mode(tar::HeaderMode::Deterministic);
    for (path, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        match content {
            Content::Bytes(bytes) => {
                header.set_size(bytes.len() as u64);
                archive.append_data(&mut header, path, bytes.as_slice())?;
            }
            Content::File(file) => {
                let file = std::fs::File::open(file)?;
                header.set_size(file.metadata()?.len());
                archive.append_data(&mut header, path, file)?;
            }
        }
    }
    let mut gzip: GzEncoder<_> = archive.into_inner()?;
    gzip.flush()?;
    gzip.finish()?.flush()
}
