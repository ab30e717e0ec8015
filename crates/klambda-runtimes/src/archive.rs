//! Unpacking archives nobody vouches for (users' `tar.gz` and `zip` sources, build contexts
//! read back from storage) without letting them escape or explode.
//!
//! Every entry is checked before a byte is written: a relative path without `..`, not absolute,
//! not through a drive or backslash; only regular files and directories (links and device files
//! are refused, whatever they point at); the number of files, the total size (counted while
//! writing, not taken from headers) and the expansion ratio over the archive's size are bounded.
//! On any refusal the destination is removed: nothing is left half-extracted and nothing is
//! written outside it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

/// Bounds on what an archive may expand to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of the files.
    pub max_total_bytes: u64,
    /// Number of files.
    pub max_files: usize,
    /// Expanded size over archive size, checked once the expanded size passes 1 MiB.
    pub max_ratio: u64,
    /// Length of one path.
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_total_bytes: 2 * 1024 * 1024 * 1024,
            max_files: 50_000,
            max_ratio: 200,
            max_path_len: 512,
        }
    }
}

/// Below this expanded size the ratio is not checked (small text files compress very well).
const RATIO_FLOOR: u64 = 1024 * 1024;

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry would write outside the destination or is a kind of file we do not unpack.
    #[error("entry {entry:?} is refused: {reason}")]
    Unsafe {
        /// The entry's path as the archive names it.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A limit was passed.
    #[error("the archive is too big: {0}")]
    TooBig(String),
    /// Not a tar.gz or zip, or corrupt.
    #[error("the archive cannot be read: {0}")]
    Unreadable(String),
    /// Writing the files failed.
    #[error("unpacking failed: {0}")]
    Io(#[from] io::Error),
}

/// The archive formats sources come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// gzip-compressed tar.
    TarGz,
    /// zip.
    Zip,
}

impl Format {
    /// Recognises the format by the file's first bytes.
    pub fn detect(path: &Path) -> Result<Self, ArchiveError> {
        let mut magic = [0u8; 4];
        let read = File::open(path)?.read(&mut magic)?;
        match &magic[..read] {
            [0x1f, 0x8b, ..] => Ok(Self::TarGz),
            [b'P', b'K', 3, 4] | [b'P', b'K', 5, 6] => Ok(Self::Zip),
            _ => Err(ArchiveError::Unreadable(
                "not a tar.gz or zip archive (by its first bytes)".into(),
            )),
        }
    }
}

/// Extracts the archive at `archive` into `dest` (created; must not exist yet) within `limits`;
/// returns the relative paths of the files, sorted. On error `dest` is removed.
pub fn extract(archive: &Path, dest: &Path, limits: &Limits) -> Result<Vec<String>, ArchiveError> {
    std::fs::create_dir(dest)?;
    let result = Format::detect(archive).and_then(|format| {
        let compressed = std::fs::metadata(archive)?.len().max(1);
        let mut budget = Budget {
            limits,
            compressed,
            total: 0,
            files: Vec::new(),
        };
        match format {
            Format::TarGz => extract_tar(archive, dest, &mut budget)?,
            Format::Zip => extract_zip(archive, dest, &mut budget)?,
        }
        budget.files.sort();
        Ok(budget.files)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

struct Budget<'a> {
    limits: &'a Limits,
    compressed: u64,
    total: u64,
    files: Vec<String>,
}

impl Budget<'_> {
    fn file(&mut self, entry: &str) -> Result<(), ArchiveError> {
        if self.files.len() >= self.limits.max_files {
            return Err(ArchiveError::TooBig(format!(
                "more than {} files",
                self.limits.max_files
            )));
        }
        self.files.push(entry.to_owned());
        Ok(())
    }

    /// Copies `reader` into a new file at `path`, counting every byte against the limits.
    fn write(&mut self, mut reader: impl Read, path: &Path) -> Result<(), ArchiveError> {
        let mut file = File::options().write(true).create_new(true).open(path)?;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = reader
                .read(&mut buffer)
                .map_err(|e| ArchiveError::Unreadable(e.to_string()))?;
            if read == 0 {
                return Ok(());
            }
            self.total += read as u64;
            if self.total > self.limits.max_total_bytes {
                return Err(ArchiveError::TooBig(format!(
                    "more than {} bytes unpacked",
                    self.limits.max_total_bytes
                )));
            }
            if self.total > RATIO_FLOOR && self.total / self.compressed > self.limits.max_ratio {
                return Err(ArchiveError::TooBig(format!(
                    "it expands more than {}× its size (a compression bomb?)",
                    self.limits.max_ratio
                )));
            }
            file.write_all(&buffer[..read])?;
        }
    }
}

/// The safe relative form of an entry's path, or why it has none.
pub fn safe_path(name: &str, limits: &Limits) -> Result<PathBuf, ArchiveError> {
    let refuse = |reason: &str| ArchiveError::Unsafe {
        entry: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.len() > limits.max_path_len {
        return Err(refuse("the path is too long"));
    }
    if name.contains('\\') || name.contains('\0') {
        return Err(refuse("backslashes and NUL are not allowed in paths"));
    }
    let path = Path::new(name);
    let mut safe = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => {
                if part.to_string_lossy().contains(':') {
                    return Err(refuse("':' is not allowed in paths"));
                }
                safe.push(part);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("'..' would leave the directory")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse("absolute paths are not allowed"));
            }
        }
    }
    if safe.as_os_str().is_empty() {
        return Err(refuse("the path is empty"));
    }
    Ok(safe)
}

fn create_parent(dest: &Path, relative: &Path) -> Result<PathBuf, ArchiveError> {
    let target = dest.join(relative);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(target)
}

fn extract_tar(archive: &Path, dest: &Path, budget: &mut Budget<'_>) -> Result<(), ArchiveError> {
    let unreadable = |e: io::Error| ArchiveError::Unreadable(e.to_string());
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(File::open(archive)?));
    for entry in tar.entries().map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let refuse = |reason: String| ArchiveError::Unsafe {
            entry: name.clone(),
            reason,
        };
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            return Err(refuse(format!(
                "links are not unpacked (this one points at {target:?}); put the file itself in the archive"
            )));
        }
        let relative = safe_path(&name, budget.limits)?;
        match kind {
            tar::EntryType::Directory => std::fs::create_dir_all(dest.join(&relative))?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                budget.file(&relative.to_string_lossy())?;
                let target = create_parent(dest, &relative)?;
                budget.write(entry, &target)?;
            }
            // Metadata records carry no files.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(refuse(format!(
                    "{other:?} entries (devices, FIFOs, …) are not unpacked"
                )));
            }
        }
    }
    Ok(())
}

fn extract_zip(archive: &Path, dest: &Path, budget: &mut Budget<'_>) -> Result<(), ArchiveError> {
    let unreadable = |e: zip::result::ZipError| ArchiveError::Unreadable(e.to_string());
    let mut zip = zip::ZipArchive::new(File::open(archive)?).map_err(unreadable)?;
    for index in 0..zip.len() {
        let entry = zip.by_index(index).map_err(unreadable)?;
        let name = entry.name().map_err(unreadable)?.into_owned();
        if entry.is_symlink() {
            return Err(ArchiveError::Unsafe {
                entry: name,
                reason: "links are not unpacked; put the file itself in the archive".into(),
            });
        }
        let relative = safe_path(&name, budget.limits)?;
        if entry.is_dir() {
            std::fs::create_dir_all(dest.join(&relative))?;
            continue;
        }
        if let Some(mode) = entry.unix_mode() {
            let kind = mode & 0o170000;
            if kind != 0 && kind != 0o100000 {
                return Err(ArchiveError::Unsafe {
                    entry: name,
                    reason: "only regular files are unpacked".into(),
                });
            }
        }
        budget.file(&relative.to_string_lossy())?;
        let target = create_parent(dest, &relative)?;
        budget.write(entry, &target)?;
    }
    Ok(())
}
