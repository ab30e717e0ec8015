//! What a function's process may touch on one machine. When the runner is root, each function
//! runs as a user and group of its own (derived from its name, above [`FIRST_ID`]), with
//! `no_new_privs`: it runs from its own copy of its artifact (code, runtime shim), root-owned and
//! readable by that group only (the build itself, with its log, is root's alone), so it can read
//! its own code but not change it, and no other function can read it, even one whose code is the
//! same (builds are shared by content); it writes only its own temporary directory (`TMPDIR`, `HOME`); it cannot read what
//! the platform keeps private (the status database, keys, tokens, secrets, other builds) or
//! signal the platform. Without root the function runs as the platform's user (a user namespace
//! or landlock would be the way there; not built), with the cleared environment only.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use klambda_events::FunctionName;
use sha2::Digest as _;

/// The first user and group id given to functions; 1,000,000 ids above it.
pub const FIRST_ID: u32 = 200_000;

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The user and group id `function` runs as, when the runner can switch to it (root).
pub fn identity_of(function: &FunctionName) -> Option<u32> {
    if !running_as_root() {
        return None;
    }
    let hash = sha2::Sha256::digest(function.as_str().as_bytes());
    let n = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]);
    Some(FIRST_ID + n % 1_000_000)
}

/// What a function runs from when it has a user of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The function's own copy of the artifact, readable by group `id` only.
    pub artifact: PathBuf,
    /// Its writable temporary directory, owned by `id`.
    pub tmp: PathBuf,
}

/// Gives the function of user `id` its own copy of `artifact` (beside it, made once), readable
/// by group `id` only, with a writable temporary directory owned by `id`. A copy, because builds
/// are shared by content: two functions with the same code have the same build, and each must
/// read it while neither can read the other's.
pub fn prepare(artifact: &Path, id: u32) -> std::io::Result<Prepared> {
    let name = artifact
        .file_name()
        .ok_or_else(|| std::io::Error::other("an artifact path has a name"))?;
    let own = artifact.with_file_name(format!("{}.u{id}", name.to_string_lossy()));
    // The build itself is the platform's alone (functions read their copies).
    std::fs::set_permissions(artifact, std::fs::Permissions::from_mode(0o700))?;
    if !own.is_dir() {
        // Copied aside, then renamed: a copy cut short is never taken for a whole one.
        static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let partial = own.with_extension(format!("partial-{}-{n}", std::process::id()));
        copy_tree(artifact, &partial)?;
        if let Err(error) = std::fs::rename(&partial, &own) {
            let _ = std::fs::remove_dir_all(&partial);
            if !own.is_dir() {
                return Err(error);
            }
        }
    }
    let tmp = own.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    share_with_group(&own, id, &tmp)?;
    std::os::unix::fs::chown(&tmp, Some(id), Some(id))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
    Ok(Prepared { artifact: own, tmp })
}

/// Copies the directory `from` to `to` (new): files with their modes, links as links, not the
/// temporary directory of an earlier run.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
        } else if kind.is_dir() {
            if from.join("tmp") != source {
                copy_tree(&source, &target)?;
            }
        } else {
            std::fs::copy(&source, &target)?;
        }
    }
    Ok(())
}

/// Root-owned, group `id`, no access for others, no writes by the group: directories 0750,
/// executables 0750, other files 0640 (`skip` is left as it is).
fn share_with_group(path: &Path, id: u32, skip: &Path) -> std::io::Result<()> {
    if path == skip {
        return Ok(());
    }
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return std::os::unix::fs::lchown(path, Some(0), Some(id));
    }
    std::os::unix::fs::chown(path, Some(0), Some(id))?;
    let mode = if meta.is_dir() || meta.permissions().mode() & 0o111 != 0 {
        0o750
    } else {
        0o640
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            share_with_group(&entry?.path(), id, skip)?;
        }
    }
    Ok(())
}

/// Closes what the platform keeps under `data_dir` to other users: the directory itself can be
/// crossed but not listed (0711), `builds` likewise (each build is then shared with its own
/// function's group only), everything else named here is the platform's alone (0700 / 0600).
pub fn close_data_dir(data_dir: &Path) -> std::io::Result<()> {
    let mode = |path: &Path, mode: u32| -> std::io::Result<()> {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    mode(data_dir, 0o711)?;
    std::fs::create_dir_all(data_dir.join("builds"))?;
    mode(&data_dir.join("builds"), 0o711)?;
    for private in ["store", "sources", "runner", "secrets"] {
        std::fs::create_dir_all(data_dir.join(private))?;
        mode(&data_dir.join(private), 0o700)?;
    }
    for file in [
        "status.db",
        "status.db-wal",
        "status.db-shm",
        "event-keys",
        "api-token",
    ] {
        mode(&data_dir.join(file), 0o600)?;
    }
    Ok(())
}

/// Whether a user other than the owner can reach `path`: every directory above it can be crossed
/// by others, and it can be executed (or crossed) by others, also where a link leads.
fn reachable_by_others(path: &Path) -> bool {
    let open = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    let all = |p: &Path| p.ancestors().all(open);
    all(path) && std::fs::canonicalize(path).is_ok_and(|real| all(&real))
}

/// `path` (a `PATH` value) without the directories a function's own user cannot reach (such as
/// a version manager's shims under root's home).
pub fn reachable_path(path: &str) -> String {
    std::env::split_paths(path)
        .filter(|dir| reachable_by_others(dir))
        .map(|dir| dir.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Where `program` is for a function's own user: itself when it names a path, else the first
/// match on `path` that user can execute.
pub fn program_for(program: &str, path: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program)).filter(|p| reachable_by_others(p));
    }
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file() && reachable_by_others(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_where_other_users_can_run_them() {
        let dir = std::env::temp_dir().join(format!("klambda-sandbox-{}", std::process::id()));
        let private = dir.join("private");
        let public = dir.join("public");
        for d in [&private, &public] {
            std::fs::create_dir_all(d).unwrap();
            let tool = d.join("tool");
            std::fs::write(&tool, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = format!("{}:{}", private.display(), public.display());
        assert_eq!(program_for("tool", &path), Some(public.join("tool")));
        assert_eq!(reachable_path(&path), public.display().to_string());
        assert_eq!(
            program_for(&private.join("tool").display().to_string(), &path),
            None
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
